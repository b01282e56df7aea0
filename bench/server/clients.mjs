// Benchmark clients: one publisher and N subscribers in this one Node process, either unmodified
// ably-js against the embedded server (mode "ably") or bare `ws` sockets against the raw
// websockets fan-out baseline (mode "raw"). Prints latency percentiles and throughput as @@result.
//
// Both modes do the same per-message client work: decode the frame (JSON or msgpack) and parse the
// timestamp the publisher put in the payload. Publisher and subscribers share performance.now(),
// so publish->deliver latency needs no clock sync. Bounded: counts come from the config and the
// whole run carries a hard timeout.
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { Ably, config, main, sleep, step, until, within } from '../../tests/js/server/lib.mjs';

const require = createRequire(new URL('../../tests/js/package.json', import.meta.url));
const WebSocket = require('ws');
const msgpack = require('@ably/msgpack-js');

const binary = config.protocol !== 'json';
const PAD = 'x'.repeat(config.payloadBytes ?? 64);
const CHANNEL = 'bench:fanout';

/** Per-subscriber receive bookkeeping shared by both modes. */
function makeSink(nSubs) {
  const sink = { counts: new Array(nSubs).fill(0), latencies: [], record: false };
  sink.deliver = (i, data) => {
    const [seq, sentAt] = data.split('|', 2);
    sink.counts[i] += 1;
    if (sink.record) sink.latencies.push(performance.now() - Number(sentAt));
    return Number(seq);
  };
  sink.total = () => sink.counts.reduce((a, b) => a + b, 0);
  return sink;
}

async function ablyClients(nSubs, sink) {
  const opts = (extra) => ({
    endpoint: config.host,
    port: config.port,
    tls: false,
    key: config.key,
    useBinaryProtocol: binary,
    disableConnectivityCheck: true,
    fallbackHosts: [],
    logLevel: 0,
    ...extra,
  });
  const all = [];
  const subs = await Promise.all(
    Array.from({ length: nSubs }, async (_, i) => {
      const client = new Ably.Realtime(opts({ clientId: `sub-${i}` }));
      all.push(client);
      await within(client.connection.whenState('connected'), 30000, `subscriber ${i} to connect`);
      await within(
        client.channels.get(CHANNEL).subscribe((m) => sink.deliver(i, m.data)),
        30000,
        `subscriber ${i} to attach`,
      );
    }),
  );
  void subs;
  const pub = new Ably.Realtime(opts({ clientId: 'publisher', echoMessages: false }));
  all.push(pub);
  await within(pub.connection.whenState('connected'), 30000, 'publisher to connect');
  const ch = pub.channels.get(CHANNEL);
  await within(ch.attach(), 30000, 'publisher attach');
  return {
    publish: (data) => ch.publish('b', data),
    close: async () => {
      for (const c of all) c.close();
      await Promise.all(all.map((c) => within(c.connection.whenState('closed'), 5000, 'close').catch(() => {})));
    },
  };
}

async function rawClients(nSubs, sink) {
  const url = `ws://${config.host}:${config.port}/`;
  const decode = binary ? (buf) => msgpack.decode(buf) : (buf) => JSON.parse(buf.toString());
  const encode = binary ? (obj) => msgpack.encode(obj) : (obj) => JSON.stringify(obj);
  const open = (role) =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(`${url}?role=${role}`);
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    });
  const socks = await Promise.all(Array.from({ length: nSubs }, () => open('sub')));
  socks.forEach((ws, i) => ws.on('message', (buf) => sink.deliver(i, decode(buf).data)));
  const pub = await open('pub');
  const waiting = [];
  pub.on('message', () => waiting.shift()?.());
  // the baseline server acknowledges each publish after fanning it out, like an Ably ACK
  return {
    extensions: pub.extensions,
    publish: (data) =>
      new Promise((resolve) => {
        waiting.push(resolve);
        pub.send(encode({ name: 'b', data }));
      }),
    close: async () => {
      for (const ws of [...socks, pub]) ws.close();
      await sleep(50);
    },
  };
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

main(
  async () => {
    const nSubs = config.subscribers;
    const sink = makeSink(nSubs);
    step('connect');
    const t0 = performance.now();
    const clients = config.mode === 'ably' ? await ablyClients(nSubs, sink) : await rawClients(nSubs, sink);
    const connectMs = performance.now() - t0;
    let seq = 0;
    const payload = () => `${seq++}|${performance.now()}|${PAD}`;

    async function paced(count, rateHz) {
      const start = sink.total();
      const acks = [];
      const t = performance.now();
      for (let i = 0; i < count; i++) {
        const due = t + (i * 1000) / rateHz;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
        acks.push(clients.publish(payload()));
      }
      await within(Promise.all(acks), 60000, 'paced publishes to be acknowledged');
      await until(() => sink.total() - start >= count * nSubs, 60000, 'paced deliveries');
    }

    step('warm-up');
    await paced(config.warmup ?? 20, config.rateHz);

    step('latency');
    sink.record = true;
    await paced(config.latencyCount, config.rateHz);
    sink.record = false;
    const lat = sink.latencies.slice().sort((a, b) => a - b);

    step('throughput');
    // publish with a bounded window for a fixed time (and at most maxCount messages), then drain
    const durationMs = (config.throughputSeconds ?? 3) * 1000;
    const maxCount = config.maxCount ?? 200000;
    const windowSize = config.window ?? 50;
    const start = sink.total();
    const tStart = performance.now();
    let inFlight = 0;
    let sent = 0;
    const more = () => sent < maxCount && performance.now() - tStart < durationMs;
    await new Promise((resolve, reject) => {
      const pump = () => {
        while (inFlight < windowSize && more()) {
          inFlight += 1;
          sent += 1;
          clients.publish(payload()).then(() => {
            inFlight -= 1;
            if (more()) pump();
            else if (inFlight === 0) resolve();
          }, reject);
        }
      };
      pump();
    });
    const count = sent;
    await until(() => sink.total() - start >= count * nSubs, 120000, 'throughput deliveries');
    const seconds = (performance.now() - tStart) / 1000;

    step('close');
    await clients.close();
    return {
      mode: config.mode,
      protocol: config.protocol,
      subscribers: nSubs,
      connectMs,
      extensions: clients.extensions ?? null,
      latency: {
        samples: lat.length,
        p50: percentile(lat, 50),
        p99: percentile(lat, 99),
        mean: lat.reduce((a, b) => a + b, 0) / (lat.length || 1),
        max: lat.length ? lat[lat.length - 1] : null,
      },
      throughput: { messages: count, seconds, msgsPerSec: count / seconds, deliveriesPerSec: (count * nSubs) / seconds },
    };
  },
  { timeoutMs: config.timeoutMs ?? 240000 },
);
