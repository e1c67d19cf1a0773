// callgate's contract as the small Node.js/Express app an operator might write instead (the
// gate documentation's examples are Express), for the side by side benchmark in
// bench/compare.sh. Not a product: written to be fast and faithful enough that the comparison
// is fair.
//
// Per voice request: strict form parse (400), X-Twilio-Signature checked by Twilio's own
// library (`twilio.validateRequest`, 403), only Direction=inbound + CallStatus=ringing gated
// (400 without To), the number -> its gate, else its agent's gate, else none; the gate asked
// with a JSON POST through a keep-alive http.Agent under the gate's timeout (Node's global
// fetch was tried first: 2.5 times slower here, so it would not be a fair rival); exactly
// status 200 + {"action":"reject"} rejects with busy TwiML; anything else forwards the original
// bytes to the engine through a keep-alive agent (fail open, or fail closed for on_failure
// "reject"). One JSON log line per decision, buffered and written every 50 ms as callgate does.
// One worker process per core (node:cluster), as nginx runs a worker per core.
//
// Configuration from the environment: LISTEN (host:port), ENGINE (host:port), ROUTES (file),
// TOKEN, PUBLIC_URL, LOG (file), WORKERS (default: one per core).

'use strict';

const cluster = require('node:cluster');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const os = require('node:os');

const env = process.env;
const WORKERS = Number(env.WORKERS || os.availableParallelism());

if (cluster.isPrimary) {
  for (let i = 0; i < WORKERS; i++) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code) => {
    console.error(`node bench: worker ${worker.process.pid} exited with ${code}`);
  });
  return;
}

const express = require('express');
const twilio = require('twilio');

const [listenHost, listenPort] = env.LISTEN.split(':');
const [engineHost, enginePort] = env.ENGINE.split(':');
const ROUTES = JSON.parse(fs.readFileSync(env.ROUTES, 'utf8'));
const NUMBERS = new Map(Object.entries(ROUTES.numbers || {}));
const AGENTS = new Map(Object.entries(ROUTES.agents || {}));
const DEFAULT_TIMEOUT_MS = 5000;
const REJECT_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject reason="busy"/></Response>';
const BAD_ESCAPE = /%(?![0-9A-Fa-f]{2})/;
const engineAgent = new http.Agent({ keepAlive: true, maxSockets: 256 });

// Decision lines, written in batches so a call never waits on a write.
const LOG = fs.openSync(env.LOG || '/dev/null', 'a');
let pending = [];
setInterval(() => {
  if (pending.length > 0) {
    const text = pending.join('');
    pending = [];
    fs.write(LOG, text, () => {});
  }
}, 50).unref();

function logDecision(fields) {
  pending.push(JSON.stringify({ time: new Date().toISOString(), message: 'call decided', ...fields }) + '\n');
}

// An object of decoded name -> value (arrays for repeats, as twilio.validateRequest takes),
// the first value of each name, or null for a bad escape or invalid UTF-8.
function parseForm(text) {
  if (BAD_ESCAPE.test(text)) {
    return null;
  }
  const params = Object.create(null);
  try {
    for (const piece of text.split('&')) {
      if (piece.length === 0) {
        continue;
      }
      const eq = piece.indexOf('=');
      const name = decodeURIComponent((eq < 0 ? piece : piece.substring(0, eq)).replace(/\+/g, ' '));
      const value = decodeURIComponent((eq < 0 ? '' : piece.substring(eq + 1)).replace(/\+/g, ' '));
      if (name in params) {
        params[name] = [].concat(params[name], value);
      } else {
        params[name] = value;
      }
    }
  } catch (e) {
    return null;
  }
  return params;
}

function first(params, name) {
  const value = params[name];
  return Array.isArray(value) ? value[0] : value;
}

function resolve(to) {
  const entry = NUMBERS.get(to);
  if (!entry) {
    return { gate: null, source: 'none', agentId: '' };
  }
  const agentId = entry.agent_id || '';
  if (entry.gate) {
    return { gate: entry.gate, source: 'number', agentId };
  }
  const agent = agentId ? AGENTS.get(agentId) : undefined;
  if (agent && agent.gate) {
    return { gate: agent.gate, source: 'agent', agentId };
  }
  return { gate: null, source: 'none', agentId };
}

// 'accept', 'reject', or a failure cause, within the gate's timeout for the whole exchange.
const agents = {
  'http:': new http.Agent({ keepAlive: true, maxSockets: 256 }),
  'https:': new https.Agent({ keepAlive: true, maxSockets: 256 }),
};
function ask(gate, body) {
  return new Promise((resolve) => {
    let request;
    let settled = false;
    const done = (answer) => {
      if (!settled) {
        settled = true;
        clearTimeout(timer);
        resolve(answer);
      }
    };
    const timer = setTimeout(() => {
      done('timeout');
      if (request) {
        request.destroy();
      }
    }, gate.timeout_ms || DEFAULT_TIMEOUT_MS);
    try {
      const url = new URL(gate.url);
      const client = url.protocol === 'https:' ? https : http;
      request = client.request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        agent: agents[url.protocol],
      }, (reply) => {
        const chunks = [];
        let size = 0;
        reply.on('data', (chunk) => {
          size += chunk.length;
          if (size > 64 * 1024) {
            done('malformed');
            request.destroy();
          } else {
            chunks.push(chunk);
          }
        });
        // An answer cut off after its head ends in 'close' without 'end'.
        reply.on('close', () => done(reply.complete ? 'malformed' : 'connect'));
        reply.on('end', () => {
          if (reply.statusCode !== 200) {
            return done('status');
          }
          let answer;
          try {
            answer = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch (e) {
            return done('malformed');
          }
          if (answer === null || typeof answer !== 'object' || Array.isArray(answer)) {
            return done('malformed');
          }
          done(answer.action === 'accept' || answer.action === 'reject' ? answer.action : 'malformed');
        });
      });
      request.on('error', () => done('connect'));
      request.end(body);
    } catch (e) {
      done('connect');
    }
  });
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'content-length']);

// The original request, its bytes and its headers (less hop-by-hop and framing), to the engine;
// the engine's answer streamed back.
function forward(req, res, body, decision) {
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (!HOP_BY_HOP.has(name) && !name.startsWith('x-callgate-')) {
      headers[name] = value;
    }
  }
  headers['content-length'] = String(body.length);
  headers['x-forwarded-for'] = req.headers['x-forwarded-for']
    ? `${req.headers['x-forwarded-for']}, ${req.socket.remoteAddress}` : req.socket.remoteAddress;
  if (decision) {
    headers['x-callgate-decision'] = decision;
  }
  const upstream = http.request({
    host: engineHost, port: enginePort, method: req.method, path: req.originalUrl, headers,
    agent: engineAgent, timeout: 9000,
  }, (answer) => {
    const out = {};
    for (const [name, value] of Object.entries(answer.headers)) {
      if (!HOP_BY_HOP.has(name) || name === 'content-length') {
        out[name] = value;
      }
    }
    res.writeHead(answer.statusCode, out);
    answer.pipe(res);
  });
  upstream.on('timeout', () => upstream.destroy(new Error('engine timeout')));
  upstream.on('error', () => {
    if (!res.headersSent) {
      res.status(502).send('engine unreachable\n');
    } else {
      res.destroy();
    }
  });
  upstream.end(body);
}

const app = express();
app.disable('x-powered-by');
app.disable('etag');
app.use(express.raw({ type: () => true, limit: '64kb' }));

app.post('/twilio/voice', async (req, res) => {
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
  const params = parseForm(body.toString('utf8'));
  if (params === null) {
    return res.status(400).send('bad form\n');
  }
  const signature = req.get('x-twilio-signature') || '';
  if (!twilio.validateRequest(env.TOKEN, signature, env.PUBLIC_URL + req.originalUrl, params)) {
    return res.status(403).send('bad signature\n');
  }
  if (first(params, 'Direction') !== 'inbound' || first(params, 'CallStatus') !== 'ringing') {
    return forward(req, res, body, 'not_gated');
  }
  const to = first(params, 'To');
  if (to === undefined) {
    return res.status(400).send('missing To\n');
  }
  const callId = first(params, 'CallSid') || '';
  const route = resolve(to);
  const line = { call_id: callId, to, agent_id: route.agentId, source: route.source };
  if (!route.gate) {
    logDecision({ ...line, decision: 'no_gate', cause: '' });
    return forward(req, res, body, 'no_gate');
  }
  const request = { event: 'call.inbound', from: first(params, 'From') || '', to, call_id: callId };
  if (route.agentId) {
    request.agent_id = route.agentId;
  }
  const started = process.hrtime.bigint();
  const answer = await ask(route.gate, JSON.stringify(request));
  const gateMs = Number(process.hrtime.bigint() - started) / 1e6;
  const failed = answer !== 'accept' && answer !== 'reject';
  const decision = !failed ? answer : route.gate.on_failure === 'reject' ? 'fail_closed' : 'fail_open';
  logDecision({ ...line, decision, cause: failed ? answer : '', gate_ms: gateMs, gate: route.gate.url.split('?')[0] });
  if (decision === 'reject' || decision === 'fail_closed') {
    return res.type('text/xml').send(REJECT_TWIML);
  }
  return forward(req, res, body, decision);
});

// Everything else passes through.
app.use((req, res) => {
  forward(req, res, Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0), null);
});

const server = app.listen(Number(listenPort), listenHost);
server.keepAliveTimeout = 60000;
server.headersTimeout = 61000;
