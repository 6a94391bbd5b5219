// A starter server: `/` says hello, `/health` is what fleet and Consul check.
const http = require("http");
const port = Number(process.env.PORT || 3000);
http
  .createServer((req, res) => {
    if (req.url === "/health") return res.end("ok\n");
    res.end("hello from {{name}}\n");
  })
  .listen(port, () => console.log(`{{name}} listening on ${port}`));
