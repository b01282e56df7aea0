// The official JS agent for the agent-runtime benchmark: an HTTP endpoint shaped exactly like the
// @ably/ai-transport 0.8.0 README route handler (createAgentSession per request, page the history,
// run.start(), pipe the model's UIMessageChunk stream, end, session.end()), with the model replaced
// by the benchmark's scripted token stream (the same grammar as bench/agent/script.py).
//
// AW_NODE_CONFIG = {host, port, key, protocol, rollup?}. Prints `@@ready {"url", "pid"}` once listening and
// `@@event {...}` lines (prompt size at model call, provider-stream close time). Runs until stdin
// closes or SIGTERM. Times are CLOCK_MONOTONIC microseconds (process.hrtime), shared by every
// process on the machine, so the Python driver and the other Node process can compare them.
import { createServer } from 'node:http';

import { Invocation } from '@ably/ai-transport';
import { createAgentSession } from '@ably/ai-transport/vercel';
import * as Ably from 'ably';

const config = JSON.parse(process.env.AW_NODE_CONFIG || '{}');
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const emit = (tag, obj) => process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`);

// AW_BENCH_SENDLOG=prefix (diagnostics, bench/agent/sendlog.py): log [seq, us, sent_us] for every
// scripted token in a frame ably-js hands to `ws` (it writes each frame to the socket in send()).
if (process.env.AW_BENCH_SENDLOG) {
  const { createRequire } = await import('node:module');
  const { writeFileSync } = await import('node:fs');
  const require = createRequire(createRequire(import.meta.url).resolve('ably'));
  const WebSocket = require('ws');
  const send = WebSocket.prototype.send;
  const sent = [];
  const frames = [0, 0];
  WebSocket.prototype.send = function (data, ...rest) {
    const t = nowUs();
    const text = typeof data === 'string' ? data : Buffer.from(data).toString('latin1');
    let found = false;
    for (const m of text.matchAll(/(\d+):(\d{6,})(?::\d+)?;/g)) {
      sent.push([Number(m[1]), Number(m[2]), t]);
      found = true;
      frames[1] += 1;
    }
    if (found) frames[0] += 1;
    return send.call(this, data, ...rest);
  };
  process.on('exit', () => {
    writeFileSync(`${process.env.AW_BENCH_SENDLOG}-js-${process.pid}.json`, JSON.stringify({ kind: 'js', sent, frames, cpu: process.cpuUsage() }));
  });
}

const ably = new Ably.Realtime({
  key: config.key,
  endpoint: config.host,
  port: config.port,
  tls: false,
  useBinaryProtocol: config.protocol !== 'json',
  disableConnectivityCheck: true,
  fallbackHosts: [],
  logLevel: 0,
  // Like-for-like runs turn Ably's server-side append rollup off for both agents (appendRollupWindow).
  ...(config.rollup !== undefined ? { transportParams: { appendRollupWindow: config.rollup } } : {}),
});

/** The benchmark "model": `{"bench":"stream","id","tokens","rate"}` → `seq:us:due;` tokens (us: when
 * the generator resumed; due: when its timer was due, the time before the sleep + the interval). */
function parseScript(text) {
  try {
    const spec = JSON.parse(text);
    if (spec && spec.bench === 'stream') return spec;
  } catch {
    /* plain text */
  }
  return { bench: 'plain', id: null, tokens: 1, rate: 0 };
}

const lastUserText = (messages) => {
  const user = messages.findLast((m) => m.role === 'user');
  return user ? user.parts.filter((p) => p.type === 'text').map((p) => p.text).join('') : '';
};

async function* modelStream(spec, signal) {
  let closedReported = false;
  const reportClosed = () => {
    if (closedReported) return;
    closedReported = true;
    emit('event', { event: 'closed', id: spec.id, us: nowUs() });
  };
  // streamText closes its HTTP response when the run's abortSignal fires; this is that moment.
  signal.addEventListener('abort', reportClosed, { once: true });
  const textId = 'txt-0';
  yield { type: 'start' };
  yield { type: 'start-step' };
  yield { type: 'text-start', id: textId };
  const interval = spec.rate > 0 ? 1000 / spec.rate : 0;
  try {
    for (let seq = 1; seq <= spec.tokens; seq++) {
      let due = null;
      if (interval > 0) {
        due = nowUs() + Math.round(interval * 1000);
        await sleep(interval);
      }
      if (signal.aborted) return;
      const us = nowUs();
      yield { type: 'text-delta', id: textId, delta: spec.bench === 'plain' ? 'ok' : `${seq}:${us}:${due ?? us};` };
    }
  } finally {
    if (signal.aborted) reportClosed();
  }
  yield { type: 'text-end', id: textId };
  yield { type: 'finish-step' };
  yield { type: 'finish', finishReason: 'stop' };
}

async function handle(invocation) {
  const session = createAgentSession({ client: ably, channelName: invocation.sessionName });
  await session.connect();
  const run = session.createRun(invocation);
  const work = async () => {
    try {
      // Page in the conversation so far, then open the run on the session (README).
      while (run.view.hasOlder()) await run.view.loadOlder();
      await run.start();
      const conversation = run.view.getMessages().map(({ message }) => message);
      const spec = parseScript(lastUserText(conversation));
      emit('event', { event: 'prompt', id: spec.id, messages: conversation.length, us: nowUs() });
      const result = await run.pipe(modelStream(spec, run.abortSignal));
      await run.end(result);
    } catch (err) {
      emit('event', { event: 'error', message: String(err?.message ?? err) });
    } finally {
      await session.end().catch(() => {});
    }
  };
  void work();
  return { runId: run.runId, invocationId: run.invocationId };
}

const server = createServer((req, res) => {
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
