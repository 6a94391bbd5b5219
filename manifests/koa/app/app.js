// The classic Koa hello world, as its users run it: under pm2-runtime (ecosystem.json), in
// Docker, configured from Consul KV "on the fly".
//
// fleet gives every container CONSUL_HTTP_ADDR (its host's agent, as containers reach it) and
// FLEET_CONFIG_PREFIX (this app's KV prefix, e.g. koa/production/app/). The greeting is the
// key `greeting` under that prefix (`config.greeting` in fleet.toml), read with a blocking
// query: a deploy that changes it only writes the key, and every worker answers with the new
// value as soon as Consul wakes the query up. Without Consul: "Hello Koa@2".
const http = require('http');
const fs = require('fs');
const net = require('net');
const Koa = require('koa');

const port = Number(process.env.PORT || 3000);
const consul = process.env.CONSUL_HTTP_ADDR;
const prefix = process.env.FLEET_CONFIG_PREFIX || '';
let greeting = 'Hello Koa@2';

console.error('fake error'); // what the original app logs to stderr at start

// A worker that dies at start, for the tests of fleet's pm2 gate: with CRASH_WORKER=N the
// worker whose pm2 instance number (NODE_APP_INSTANCE) is N exits at once, so pm2 restarts it
// until it gives up (`errored`), while the other workers serve. Unset: nothing changes.
if (process.env.CRASH_WORKER !== undefined && process.env.CRASH_WORKER === process.env.NODE_APP_INSTANCE) {
  console.error(`worker ${process.env.NODE_APP_INSTANCE} exits at start (CRASH_WORKER)`);
  process.exit(1);
}

// GET <agent>/v1/kv/<prefix>greeting?index=N&wait=5m: returns when the key changes.
function watchGreeting(index) {
  const base = consul.includes('://') ? consul : `http://${consul}`;
  const url = `${base}/v1/kv/${prefix}greeting?raw&wait=5m&index=${index}`;
  const retry = (next) => setTimeout(() => watchGreeting(next), 1000);
  http
    .get(url, (res) => {
      const next = Number(res.headers['x-consul-index'] || 0);
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => {
        if (res.statusCode === 200) greeting = body;
        // An index that goes backwards means the agent restarted: start over.
        if (res.statusCode === 200 || res.statusCode === 404) {
          watchGreeting(next > index ? next : 0);
        } else {
          retry(0);
        }
      });
    })
    .on('error', () => retry(0));
}
if (consul) watchGreeting(0);

// A visit counter in the `redis` accessory, found by name as `client` finds `app`: REDIS names
// its Consul service (`redis.service.consul`); with `dns = "consul"` the SRV record gives the
// port (the accessory publishes an ephemeral one) and its target's A record the host. GET
// /visits sends `INCR visits` (Redis's wire protocol, RESP, is one line here) and answers the
// count; the count lives on the accessory's volume, so it survives redeploys of this app.
const redis = process.env.REDIS;
const resolver = new (require('dns').promises.Resolver)(); // /etc/resolv.conf: the agent

async function incr(key) {
  const [s] = await resolver.resolveSrv(redis);
  const [host] = await resolver.resolve4(s.name);
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ host, port: s.port });
    let reply = '';
    sock.setTimeout(2000, () => sock.destroy(new Error('redis: timeout')));
    sock.on('connect', () => sock.write(`*2\r\n$4\r\nINCR\r\n$${Buffer.byteLength(key)}\r\n${key}\r\n`));
    sock.on('data', (d) => {
      reply += d;
      if (!reply.endsWith('\r\n')) return;
      sock.end();
      if (reply.startsWith(':')) resolve(Number(reply.slice(1, -2)));
      else reject(new Error(`redis: ${reply.trim()}`));
    });
    sock.on('error', reject);
  });
}

const app = new Koa();
app.use(async (ctx) => {
  if (ctx.path === '/health') {
    // `touch /tmp/unhealthy` in the container makes the check fail (the tests do).
    ctx.status = fs.existsSync('/tmp/unhealthy') ? 503 : 200;
    ctx.body = ctx.status === 200 ? 'ok' : 'unhealthy';
    return;
  }
  if (ctx.path === '/crash') {
    // A worker that dies: pm2 starts a new one.
    console.error(`worker ${process.pid} crashing`);
    setTimeout(() => process.exit(1), 10);
    ctx.body = 'bye';
    return;
  }
  if (ctx.path === '/visits') {
    if (!redis) {
      ctx.status = 404;
      ctx.body = 'no REDIS service';
      return;
    }
    try {
      ctx.body = String(await incr('visits'));
    } catch (e) {
      ctx.status = 503;
      ctx.body = `${e.message}`;
    }
    return;
  }
  ctx.body = greeting;
  console.log('send response');
});
app.listen(port);
