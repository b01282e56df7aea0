// The plumbing shared by the reference agents (reference-agent.mjs: Vercel; openai-reference-agent.mjs:
// ResponsesCodec): one Ably Realtime client on the embedded server, an HTTP endpoint that turns each
// POST into `handle(invocation)`, GET /prompts, `@@ready` / `@@event` lines, and a clean stop.
//
// AW_NODE_CONFIG = {host, port, key, protocol, ...}.
import { createServer } from 'node:http';

import { Invocation } from '@ably/ai-transport';
import * as Ably from 'ably';

export const config = JSON.parse(process.env.AW_NODE_CONFIG || '{}');
export const emit = (tag, obj) => process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`);

export const ably = new Ably.Realtime({
  key: config.key,
  endpoint: config.host,
  port: config.port,
  tls: false,
  useBinaryProtocol: config.protocol !== 'json',
  disableConnectivityCheck: true,
  fallbackHosts: [],
  logLevel: 0,
});

// session.end() detaches the shared channel; the next invocation on that channel waits for it (an
// attach racing the detach fails with "Channel detached"), as an app reusing one client would.
const ending = new Map();

/**
 * Runs one invocation the README way: a session per invocation, `work(run)` in the background, then
 * `session.end()`. `createSession(channelName)` builds the codec's agent session.
 */
export async function handleWith(invocation, createSession, work) {
  await ending.get(invocation.sessionName);
  const session = createSession(invocation.sessionName);
  await session.connect();
  const run = session.createRun(invocation);
  void (async () => {
    try {
      await work(run);
    } catch (err) {
      emit('event', { event: 'error', message: String(err?.message ?? err), stack: err?.stack ?? null });
    } finally {
      const ended = session.end().catch(() => {});
      ending.set(invocation.sessionName, ended);
      await ended;
    }
  })();
  return { runId: run.runId, invocationId: run.invocationId };
}

// Gates the scripted model may wait on; the test's conductor opens them with POST /gates/<name>.
const gates = new Map();
const gateEntry = (name) => {
  if (!gates.has(name)) {
    let open;
    const opened = new Promise((resolve) => {
      open = resolve;
    });
    gates.set(name, { opened, open });
  }
  return gates.get(name);
};

/** Resolves once the test opens gate `name`. */
export const gate = (name) => gateEntry(name).opened;

/** Serves POST /api/chat (→ `handle(invocation)`), POST /gates/<name> and GET /prompts; prints
 * `@@ready` once listening. */
export async function serveAgent(handle, prompts) {
  const server = createServer((req, res) => {
    if (req.method === 'POST' && req.url.startsWith('/gates/')) {
      gateEntry(decodeURIComponent(req.url.slice('/gates/'.length))).open();
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
      return;
    }
    if (req.method === 'GET' && req.url === '/prompts') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(prompts));
      return;
    }
    let body = '';
    req.on('data', (chunk) => {
      body += chunk;
    });
    req.on('end', async () => {
      try {
        const answer = await handle(Invocation.fromJSON(JSON.parse(body)));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(answer));
      } catch (err) {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: String(err?.message ?? err) }));
      }
    });
  });

  await ably.connection.whenState('connected');
  server.listen(0, '127.0.0.1', () => {
    emit('ready', { url: `http://127.0.0.1:${server.address().port}/api/chat`, pid: process.pid });
  });

  const stop = () => {
    server.close();
    ably.close();
    setTimeout(() => process.exit(0), 200);
  };
  process.on('SIGTERM', stop);
  process.stdin.on('end', stop);
  process.stdin.resume();
}

export { matches } from './mock-model.mjs';
