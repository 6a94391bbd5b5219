// A peer of `app` that finds it by name, as the original setup reaches `db.service.sd:3306`:
// GET /upstream answers with the body `app` gives it. fleet runs this app with
// `dns = "consul"`, so its DNS server is its host's Consul agent: `app.service.consul` has an
// SRV record per passing instance (port and target; the target has an A record), and an
// instance that fails its health check is no longer in the answer.
const http = require('http');
const Koa = require('koa');

const port = Number(process.env.PORT || 3001);
const upstream = process.env.UPSTREAM || 'app.service.consul';
const resolver = new (require('dns').promises.Resolver)(); // /etc/resolv.conf: the agent

async function pick() {
  const srv = await resolver.resolveSrv(upstream);
  const s = srv[Math.floor(Math.random() * srv.length)];
  const [address] = await resolver.resolve4(s.name);
  return { address, port: s.port };
}

function get(target, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: target.address, port: target.port, path, timeout: 2000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const app = new Koa();
app.use(async (ctx) => {
  if (ctx.path === '/health') {
    ctx.body = 'ok';
    return;
  }
  if (ctx.path === '/upstream') {
    try {
      const target = await pick();
      const res = await get(target, '/');
      ctx.set('X-Upstream', `${target.address}:${target.port}`);
      ctx.status = res.status;
      ctx.body = res.body;
    } catch (e) {
      ctx.status = 502;
      ctx.body = `cannot reach ${upstream}: ${e.message}`;
    }
    return;
  }
  ctx.status = 404;
});
app.listen(port);
