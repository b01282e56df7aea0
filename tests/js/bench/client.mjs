// Clients of the agent-runtime benchmark (bench/agent): the same workload against either agent.
//
// mode "populate": builds long sessions for the history-rebuild phase with the official JS agent
//   library in this process (user inputs + createRun/start/pipe/end per turn), returns their names
//   and last assistant codec-message-ids.
// mode "run": drives the agent at config.api through the phases listed in config.phases and
//   returns raw measurements (pytest-free; the Python driver computes percentiles and ratios).
//
// Inputs are published exactly as the official ClientSession does (ai-input, §3.1 of the wire
// notes) and the invocation is POSTed like the ChatTransport; outputs are read from raw channel
// subscriptions so the client's own folding cost is not part of the agent's numbers. Times are
// CLOCK_MONOTONIC microseconds (process.hrtime), the clock the agents stamp tokens with.
// ctl requests to the driver: {op: "rss"} / {op: "cpu"} (of the agent process; `server`: the server's), {op: "events", ids}.
import http from 'node:http';

import { Invocation } from '@ably/ai-transport';
import { createAgentSession } from '@ably/ai-transport/vercel';

import { config, connected, ctl, main, realtime, sleep, step, within } from '../server/lib.mjs';

const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const CLIENT_ID = 'bench-client';
const tag = `${config.variant ?? 'x'}-${Math.random().toString(36).slice(2, 8)}`;

// --- connections ---------------------------------------------------------------------------------

const conns = [];
async function conn(i) {
  const n = config.connections ?? 4;
  while (conns.length < n) conns.push(connected(realtime({ key: config.key, clientId: CLIENT_ID })));
  return conns[i % n];
}

// --- invocations ----------------------------------------------------------------------------------

// A POST with node:http, a new connection each (as separate users' devices would), not fetch: the
// 100 simultaneous invocations share this one client process, and undici's fetch costs ~1.5 ms of
// CPU per call here, so the 100th POST left ~100 ms after the first and the client's own cost
// counted as the agent's first-token time (for both agents). node:http takes a fraction of that.
const noKeepAlive = new http.Agent({ keepAlive: false, maxSockets: Infinity });
function postJson(url, body, stamps = {}) {
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: 'POST', agent: noKeepAlive, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          if (res.statusCode >= 200 && res.statusCode < 300) resolve();
          else reject(new Error(`POST ${url} -> ${res.statusCode} ${Buffer.concat(chunks).toString()}`));
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.on('socket', (sock) => {
      stamps.socketUs = nowUs();
      sock.once('connect', () => { stamps.connectUs = nowUs(); });
    });
    req.on('finish', () => { stamps.sentUs = nowUs(); });
    req.end(data);
  });
}

// --- one stream = one session with one (or more) runs ----------------------------------------------

class Stream {
  constructor(name, client) {
    this.name = name;
    this.client = client;
    this.channel = client.channels.get(name);
    this.latencies = [];
    this.dueLatencies = [];
    this.emitted = [];
    this.maxSeq = 0;
    this.tokens = 0;
    this.appends = 0;
    this.samples = [];
    this.runId = null;
    this.runStartUs = null;
    this.firstTokenUs = null;
    this.lastTokenUs = null;
    this.endUs = null;
    this.reason = null;
    this.outputCmid = null;
    this._ended = null;
    this.ended = new Promise((resolve) => {
      this._ended = resolve;
    });
    this._tokenWaiters = [];
  }

  async open() {
    await within(this.channel.subscribe((m) => this.onMessage(m)), 15000, `attach ${this.name}`);
    return this;
  }

  onMessage(m) {
    const t = nowUs();
    const h = m.extras?.ai?.transport ?? {};
    if (m.name === 'ai-run-start' || m.name === 'ai-run-resume') {
      if (this.runStartUs === null) this.runStartUs = t;
      this.runId = h['run-id'];
    } else if (m.name === 'ai-run-end') {
      this.endUs = t;
      this.reason = h['run-reason'] ?? 'complete';
      this._ended();
    } else if (typeof m.data === 'string' && m.data && m.extras?.ai?.codec?.kind === 'text') {
      if (h['role'] === 'assistant') this.outputCmid = h['codec-message-id'];
      if (m.action === 'message.append') this.appends += 1;
      for (const token of m.data.split(';')) {
        if (!token) continue;
        // `seq:us:due` (bench/agent/script.py): us = the model's generator resumed, due = its timer was due
        const [seq, us, due] = token.split(':');
        const n = Number(seq);
        if (!(n > this.maxSeq)) continue;
        this.maxSeq = n;
        this.tokens += 1;
        if (us !== undefined) {
          this.latencies.push(t - Number(us));
          this.dueLatencies.push(t - Number(due ?? us));
          this.emitted.push(Number(us));
          if (config.timeline) this.samples.push([n, Number(us), t, Number(due ?? us)]);
        }
        if (this.firstTokenUs === null) this.firstTokenUs = t;
        this.lastTokenUs = t;
      }
      if (this._tokenWaiters.length) {
        this._tokenWaiters = this._tokenWaiters.filter(([count, resolve]) => {
          if (this.tokens >= count) resolve();
          return this.tokens < count;
        });
      }
    }
  }

  untilTokens(count) {
    if (this.tokens >= count) return Promise.resolve();
    return new Promise((resolve) => this._tokenWaiters.push([count, resolve]));
  }

  /** Publishes a user ai-input (as ClientSession does) and POSTs the invocation; returns its ids. */
  async send(text, { parent, post = true } = {}) {
    const cmid = crypto.randomUUID();
    const eventId = crypto.randomUUID();
    const transport = {
      role: 'user',
      'codec-message-id': cmid,
      'run-client-id': CLIENT_ID,
      'event-id': eventId,
      stream: 'false',
      discrete: 'true',
      ...(parent ? { parent } : {}),
    };
    const codec = { kind: 'user-message', messageId: `ui-${cmid.slice(0, 8)}`, partType: 'text' };
    await within(this.channel.publish([{ name: 'ai-input', data: text, extras: { ai: { transport, codec } } }]), 15000, 'input publish');
    this.postUs = nowUs();
    if (post) {
      this.postStamps = {};
      await postJson(config.api, { inputEventId: eventId, sessionName: this.name }, this.postStamps);
    }
    return { cmid, eventId };
  }

  async cancel() {
    const transport = { 'event-id': crypto.randomUUID(), 'run-id': this.runId };
    this.cancelUs = nowUs();
    await within(this.channel.publish({ name: 'ai-cancel', extras: { ai: { transport } } }), 15000, 'cancel publish');
  }

  async close() {
    this.channel.unsubscribe();
    await this.channel.detach().catch(() => {});
    this.client.channels.release(this.name);
  }
}

const spec = (id, tokens, rate) => JSON.stringify({ bench: 'stream', id, tokens, rate });

async function openStreams(phase, n) {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => new Stream(`bench:${tag}:${phase}:${i}`, await conn(i)).open()),
  );
}

async function endAll(streams, ms, what) {
  await within(Promise.all(streams.map((s) => s.ended)), ms, what);
}

/** N concurrent streams of `tokens` tokens at `rate`; returns latencies and timings. */
async function streamsPhase(phase, { n, tokens, rate, timeoutMs = 120000, partialOk = false }) {
  step(`${phase}: open ${n}`);
  const streams = await openStreams(phase, n);
  step(`${phase}: send`);
  const cpu0 = await ctl({ op: 'cpu' });
  const t0 = nowUs();
  const sends = await Promise.allSettled(streams.map((s, i) => s.send(spec(`${phase}-${i}`, tokens, rate))));
  const refusedSends = sends.filter((r) => r.status === 'rejected');
  if (refusedSends.length && !partialOk) throw refusedSends[0].reason;
  for (const [i, r] of sends.entries()) if (r.status === 'rejected') streams[i]._ended(); // never started
  step(`${phase}: streaming`);
  let timedOut = false;
  try {
    await endAll(streams, timeoutMs, `${phase} runs to end`);
  } catch (err) {
    if (!partialOk) throw err;
    timedOut = true; // reported with what arrived (the sanity checks show the shortfall)
  }
  const t1 = Math.max(...streams.map((s) => s.lastTokenUs ?? s.endUs));
  const cpu1 = await ctl({ op: 'cpu' });
  // Steady state: tokens the model emitted once every stream had delivered its first token, i.e.
  // after the burst of N simultaneous invocations (attach, history, run-start) is over.
  const allStreaming = Math.max(...streams.map((s) => s.firstTokenUs ?? 0));
  const steady = streams.flatMap((s) => s.latencies.filter((_, i) => s.emitted[i] >= allStreaming));
  // The same tokens, from the time the model's timer was due (its `due` stamp) rather than the time
  // its generator resumed: this also counts the agent's own event-loop wait behind earlier tokens.
  const steadyDue = streams.flatMap((s) => s.dueLatencies.filter((_, i) => s.emitted[i] >= allStreaming));
  const out = {
    steadyLatenciesUs: steady,
    steadyDueLatenciesUs: steadyDue,
    cpuSeconds: cpu1.seconds - cpu0.seconds,
    serverCpuSeconds: cpu1.server - cpu0.server,
    // the machine's clock ticks over the phase (busy / idle / steal: the hypervisor's other guests)
    ...(cpu0.machine ? { machineTicks: Object.fromEntries(Object.keys(cpu0.machine).map((k) => [k, cpu1.machine[k] - cpu0.machine[k]])) } : {}),
    n,
    tokens,
    rate,
    timedOut,
    failedInvocations: refusedSends.length,
    failedReasons: [...new Set(refusedSends.map((r) => String(r.reason?.cause?.code ?? r.reason?.message ?? r.reason)))].slice(0, 5),
    ended: streams.filter((s) => s.reason !== null).length,
    received: streams.reduce((a, s) => a + s.tokens, 0),
    appends: streams.reduce((a, s) => a + s.appends, 0),
    ...(config.timeline ? { timeline: streams.map((s) => ({ postUs: s.postUs, postStamps: s.postStamps, runStartUs: s.runStartUs, samples: s.samples })) } : {}),
    latenciesUs: streams.flatMap((s) => s.latencies),
    reasons: streams.map((s) => s.reason),
    firstTokenUs: streams.map((s) => (s.firstTokenUs ?? s.endUs) - s.postUs),
    wallUs: t1 - t0,
  };
  await Promise.all(streams.map((s) => s.close()));
  return out;
}

async function throughputPhase({ n, tokens }) {
  const out = await streamsPhase('throughput', { n, tokens, rate: 0 });
  delete out.latenciesUs;
  delete out.steadyLatenciesUs;
  delete out.steadyDueLatenciesUs;
  return out;
}

async function memoryPhase({ n }) {
  step('memory: baseline');
  await sleep(300);
  const base = await ctl({ op: 'rss' });
  const streams = await openStreams('memory', n);
  step('memory: hold runs');
  await Promise.all(streams.map((s, i) => s.send(spec(`memory-${i}`, 100000, 1))));
  await within(Promise.all(streams.map((s) => s.untilTokens(1))), 60000, 'every held run to stream');
  await sleep(300);
  const active = await ctl({ op: 'rss' });
  step('memory: cancel all');
  await Promise.all(streams.map((s) => s.cancel()));
  await endAll(streams, 60000, 'held runs to end');
  const reasons = streams.map((s) => s.reason);
  await Promise.all(streams.map((s) => s.close()));
  await sleep(300);
  const after = await ctl({ op: 'rss' });
  return { n, baseKb: base.kb, activeKb: active.kb, afterKb: after.kb, reasons };
}

async function cancelPhase({ n }) {
  const samples = [];
  for (let i = 0; i < n; i++) {
    step(`cancel ${i}`);
    const [s] = await openStreams(`cancel${i}`, 1);
    const id = `cancel-${tag}-${i}`;
    await s.send(spec(id, 100000, 20));
    await within(s.untilTokens(3), 20000, 'tokens before cancel');
    await s.cancel();
    await within(s.ended, 20000, 'run end after cancel');
    const events = await ctl({ op: 'events', ids: [id], event: 'closed', limit_s: 10 });
    const closed = events.events[0];
    samples.push({
      reason: s.reason,
      closedUs: closed ? closed.us - s.cancelUs : null,
      runEndUs: s.endUs - s.cancelUs,
    });
    await s.close();
  }
  return { samples };
}

async function historyPhase(sessions) {
  const samples = [];
  for (const [i, entry] of sessions.entries()) {
    step(`history ${entry.session}`);
    const s = await new Stream(entry.session, await conn(i)).open();
    const id = `history-${tag}-${i}`;
    await s.send(spec(id, 5, 0), { parent: entry.lastCmid });
    await within(s.ended, 120000, 'history run to end');
    const events = await ctl({ op: 'events', ids: [id], event: 'prompt', limit_s: 10 });
    samples.push({
      runStartUs: s.runStartUs - s.postUs,
      firstTokenUs: s.firstTokenUs - s.postUs,
      promptMessages: events.events[0]?.messages ?? null,
      reason: s.reason,
    });
    await s.close();
  }
  return { samples };
}

// --- populate (official JS agent library, in this process) --------------------------------------

async function* answer(text) {
  yield { type: 'start' };
  yield { type: 'start-step' };
  yield { type: 'text-start', id: 't0' };
  yield { type: 'text-delta', id: 't0', delta: text };
  yield { type: 'text-end', id: 't0' };
  yield { type: 'finish-step' };
  yield { type: 'finish', finishReason: 'stop' };
}

async function populateOne(name, turns, agentClient, i) {
  const s = await new Stream(name, await conn(i)).open();
  const session = createAgentSession({ client: agentClient, channelName: name });
  await session.connect();
  let parent;
  for (let turn = 0; turn < turns; turn++) {
    const eventId = crypto.randomUUID();
    const run = session.createRun(Invocation.fromJSON({ inputEventId: eventId, sessionName: name }));
    // publish the input with that event-id (what the ChatTransport would have POSTed)
    const cmid = crypto.randomUUID();
    const transport = {
      role: 'user',
      'codec-message-id': cmid,
      'run-client-id': CLIENT_ID,
      'event-id': eventId,
      stream: 'false',
      discrete: 'true',
      ...(parent ? { parent } : {}),
    };
    const codec = { kind: 'user-message', messageId: `ui-${cmid.slice(0, 8)}`, partType: 'text' };
    s.outputCmid = null;
    await s.channel.publish([{ name: 'ai-input', data: `Question ${turn}`, extras: { ai: { transport, codec } } }]);
    await within(run.start(), 15000, 'populate run start');
    await run.pipe(answer(`Answer ${turn}`));
    await run.end({ reason: 'complete' });
    const deadline = Date.now() + 10000;
    while (s.outputCmid === null && Date.now() < deadline) await sleep(2);
    if (s.outputCmid === null) throw new Error('populate: no assistant output seen');
    parent = s.outputCmid;
  }
  await session.end();
  await s.close();
  return { session: name, lastCmid: parent, turns };
}

async function populate() {
  // The worker folds lifecycle messages only from its own clientId (others' would be forged): the
  // sessions are built as by an earlier run of the agent under test, with the worker's clientId.
  const agentClient = await connected(realtime({ key: config.key, clientId: config.agentClientId }));
  const names = config.sessions;
  const made = await Promise.all(names.map((name, i) => populateOne(name, config.turns, agentClient, i)));
  return { sessions: made };
}

// --- main ----------------------------------------------------------------------------------------

main(
  async () => {
    if (config.mode === 'populate') return populate();
    const p = config.phases;
    const out = {};
    if (p.warmup) out.warmup = await streamsPhase('warmup', p.warmup);
    // memory first: later phases leave freed memory behind that held runs would simply reuse
    if (p.memory) out.memory = await memoryPhase(p.memory);
    if (p.latency1) out.latency1 = await streamsPhase('latency1', p.latency1);
    if (p.latencyN) out.latencyN = await streamsPhase('latencyN', p.latencyN);
    if (p.latencyBig) out.latencyBig = await streamsPhase('latencyBig', p.latencyBig);
    if (p.throughput) out.throughput = await throughputPhase(p.throughput);
    if (p.cancel) out.cancel = await cancelPhase(p.cancel);
    if (p.history) out.history = await historyPhase(p.history);
    return out;
  },
  { timeoutMs: config.timeoutMs ?? 600000 },
);
