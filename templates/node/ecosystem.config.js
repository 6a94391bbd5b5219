// pm2 inside the container: one process here; fleet runs more containers for more instances
// (`instances` in fleet.toml), each with its own host port.
module.exports = {
  apps: [
    {
      name: "{{name}}",
      script: "index.js",
      instances: 1,
      exec_mode: "fork",
    },
  ],
};
