// The local edge: CloudFront's viewer-request step in front of a local
// origin (the runner, `flashsale gateway`). Each request runs the very
// function the template deploys (load.mjs), with its KeyValueStore reading
// what the local store (tools::kvs) has propagated; the function's answer
// goes back to the viewer, anything else on to the origin, body and all.
//
//   node --experimental-vm-modules edge/local/server.mjs \
//     --listen 127.0.0.1:3100 --origin http://127.0.0.1:3000 --kvs http://127.0.0.1:4599
//
// GET /_edge/stats answers what it counted: requests answered at the edge,
// forwarded, refused by the origin's throttle, and failed to reach the
// origin; GET /_edge/view its copy of the store.
//
// --origin-rate R [--origin-burst B] throttles what reaches the origin as
// API Gateway does (a token bucket: R requests a second, B at once; 429
// beyond). The viewer's address is the first X-Forwarded-For entry when
// one is sent (CloudFront's is the client's own), so one machine can be a
// crowd of viewers.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { loadHandler } from './load.mjs';

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:3100' },
    origin: { type: 'string' },
    kvs: { type: 'string' },
    // How often the edge copies the store's propagated view: a bound on top
    // of the store's own propagation delay.
    'poll-ms': { type: 'string', default: '50' },
    'origin-rate': { type: 'string' },
    'origin-burst': { type: 'string' },
  },
});
if (!args.origin || !args.kvs) {
  console.error('usage: server.mjs --listen HOST:PORT --origin URL --kvs URL [--poll-ms N]');
  process.exit(2);
}
const origin = new URL(args.origin);
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

let view = new Map();
let viewOk = false;
async function refresh() {
  try {
    const res = await fetch(new URL('/_local/view', args.kvs));
    if (!res.ok) {
      throw new Error(`status ${res.status}`);
    }
    view = new Map(Object.entries(await res.json()));
    viewOk = true;
  } catch (e) {
    // The edge keeps its last copy, as CloudFront's would.
    if (viewOk) {
      console.error(`edge: reading the local KeyValueStore failed (${e.message}); keeping the last copy`);
    }
    viewOk = false;
  }
}
// One read at a time: a slow read never lands after a newer one.
async function keepRefreshing() {
  await refresh();
  setTimeout(keepRefreshing, Number(args['poll-ms']));
}
await keepRefreshing();

const handler = await loadHandler((key) => view.get(key));
const stats = { answered: 0, forwarded: 0, throttled: 0, origin_errors: 0, function_errors: 0 };

// API Gateway's throttle in front of the origin, when asked for.
const rate = args['origin-rate'] ? Number(args['origin-rate']) : null;
const burst = args['origin-burst'] ? Number(args['origin-burst']) : rate;
if (rate !== null && !(rate > 0 && burst >= 1)) {
  console.error('--origin-rate must be a positive number and --origin-burst at least 1');
  process.exit(2);
}
let tokens = burst;
let filled = performance.now();
function admitToOrigin() {
  if (rate === null) {
    return true;
  }
  const now = performance.now();
  tokens = Math.min(burst, tokens + ((now - filled) / 1000) * rate);
  filled = now;
  if (tokens < 1) {
    return false;
  }
  tokens -= 1;
  return true;
}

/// CloudFront's viewer-request event for a node request.
function eventOf(req) {
  const url = new URL(req.url, 'http://edge.local');
  const querystring = {};
  for (const [name, value] of url.searchParams) {
    if (querystring[name]) {
      (querystring[name].multiValue ??= [{ value: querystring[name].value }]).push({ value });
    } else {
      querystring[name] = { value };
    }
  }
  const headers = {};
  const cookies = {};
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase();
    const value = req.rawHeaders[i + 1];
    if (name === 'cookie') {
      for (const pair of value.split(';')) {
        const at = pair.indexOf('=');
        if (at > 0) {
          cookies[pair.slice(0, at).trim()] = { value: pair.slice(at + 1).trim() };
        }
      }
    }
    if (headers[name]) {
      (headers[name].multiValue ??= [{ value: headers[name].value }]).push({ value });
    } else {
      headers[name] = { value };
    }
  }
  return {
    version: '1.0',
    context: { eventType: 'viewer-request', requestId: String(stats.answered + stats.forwarded), distributionId: 'LOCAL' },
    viewer: { ip: (req.headers['x-forwarded-for'] ?? '').split(',')[0].trim() || req.socket.remoteAddress },
    request: { method: req.method, uri: url.pathname, querystring, headers, cookies },
  };
}

// Hop-by-hop headers are the connection's, not the request's.
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

function valuesOf(entry) {
  return entry.multiValue ? entry.multiValue.map((v) => v.value) : [entry.value];
}

function answer(res, response) {
  const headers = {};
  for (const [name, entry] of Object.entries(response.headers ?? {})) {
    headers[name] = valuesOf(entry);
  }
  // CloudFront writes the response's cookies as Set-Cookie headers.
  const cookies = Object.entries(response.cookies ?? {});
  if (cookies.length) {
    headers['set-cookie'] = cookies.map(([name, c]) =>
      `${name}=${c.value}${c.attributes ? `; ${c.attributes}` : ''}`);
  }
  let body = response.body ?? '';
  if (typeof body === 'object') {
    body = Buffer.from(body.data, body.encoding === 'base64' ? 'base64' : 'utf8');
  }
  res.writeHead(response.statusCode, response.statusDescription, headers);
  res.end(body);
}

function forward(req, res, request) {
  const query = [];
  for (const [name, entry] of Object.entries(request.querystring)) {
    for (const value of valuesOf(entry)) {
      query.push(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`);
    }
  }
  const headers = {};
  for (const [name, entry] of Object.entries(request.headers)) {
    if (!HOP_BY_HOP.has(name)) {
      headers[name] = valuesOf(entry);
    }
  }
  headers.host = origin.host;
  const upstream = http.request(
    {
      agent,
      host: origin.hostname,
      port: origin.port,
      method: request.method,
      path: request.uri + (query.length ? `?${query.join('&')}` : ''),
      headers,
    },
    (reply) => {
      const headers = Object.fromEntries(
        Object.entries(reply.headers).filter(([name]) => !HOP_BY_HOP.has(name)),
      );
      res.writeHead(reply.statusCode, reply.statusMessage, headers);
      reply.on('error', (e) => res.destroy(e));
      reply.pipe(res);
    },
  );
  upstream.on('error', (e) => {
    stats.origin_errors += 1;
    if (res.headersSent) {
      // Part of the answer went out: cut it rather than append to it.
      res.destroy(e);
      return;
    }
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'origin_unreachable', message: `the local edge could not reach ${args.origin}: ${e.message}` }));
  });
  req.pipe(upstream);
}

const server = http.createServer(async (req, res) => {
  if (req.url === '/_edge/stats' || req.url === '/_edge/view') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(req.url === '/_edge/stats' ? stats : Object.fromEntries(view)));
    return;
  }
  let result;
  try {
    result = await handler(eventOf(req));
  } catch (e) {
    // CloudFront answers a failing function 503; the local edge does too.
    stats.function_errors += 1;
    res.writeHead(503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'edge_function_failed', message: e.message }));
    return;
  }
  if (result && result.statusCode) {
    stats.answered += 1;
    req.resume();
    answer(res, result);
  } else if (!admitToOrigin()) {
    stats.throttled += 1;
    req.resume();
    res.writeHead(429, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ message: 'Too Many Requests' }));
  } else {
    stats.forwarded += 1;
    forward(req, res, result);
  }
});
server.keepAliveTimeout = 30_000;
const at = args.listen.lastIndexOf(':');
server.listen(Number(args.listen.slice(at + 1)), args.listen.slice(0, at), () => {
  const { address, port } = server.address();
  // The line scripts wait for: the address it serves.
  console.log(`edge listening on http://${address}:${port}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
// The process that started it (the runner, the gateway, a test) may be
// killed without a chance to stop it: the edge then stops too, rather
// than hold its port.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) {
    process.exit(0);
  }
}, 1000).unref();
