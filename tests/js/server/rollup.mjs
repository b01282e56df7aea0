// Server-side append rollup seen through ably-js: the `appendRollupWindow` transport parameter,
// pipelined appendMessage calls (as AIT's encoder makes them) reaching a subscriber as the first
// append plus rolled-up appends, history showing each message once, and — with config.limits (the
// server enforcing Ably's rate limits) — a burst that rollup keeps under the connection's limit.
import { config, connected, main, msg, realtime, rest, sleep, step, until, within } from './lib.mjs';

const name = `${config.ns}:rollup`;

/** Fires every append before awaiting any ACK; returns each outcome (versionSerial or error code). */
async function pipelined(channel, serial, fragments, extras = (i) => ({ i })) {
  const pending = fragments.map((data, i) =>
    channel.appendMessage({ serial, data, extras: extras(i) }).then(
      (r) => ({ versionSerial: r.versionSerial }),
      (err) => ({ error: err.code ?? null }),
    ),
  );
  return within(Promise.all(pending), 20000, 'pipelined appends');
}

async function limits() {
  step('connect');
  const rolled = await connected(realtime({ clientId: 'agent-a' }));
  const unrolled = await connected(realtime({ clientId: 'agent-b', transportParams: { appendRollupWindow: 0 } }));
  const out = {};
  for (const [label, client] of [['rolled', rolled], ['unrolled', unrolled]]) {
    step(`burst ${label}`);
    const ch = client.channels.get(`${name}:${label}`);
    const serial = (await within(ch.publish('reply', ''), 10000, 'create')).serials[0];
    const fragments = Array.from({ length: 200 }, (_, i) => `${i},`);
    const outcomes = await pipelined(ch, serial, fragments);
    // Held appends are published when their window closes, shortly after their ACKs.
    const text = fragments.join('');
    let history = [];
    for (let tries = 0; tries < 100; tries++) {
      history = (await within(rest().channels.get(`${name}:${label}`).history(), 10000, 'history')).items.map(msg);
      if (label === 'unrolled' || history[0]?.data === text) break;
      await sleep(50);
    }
    out[label] = { outcomes, text, history };
  }
  return out;
}

async function stream() {
  step('connect');
  const agent = await connected(realtime({ clientId: 'agent', transportParams: { appendRollupWindow: 300 } }));
  const viewer = await connected(realtime({ clientId: 'viewer' }));
  const chA = agent.channels.get(name);
  const chV = viewer.channels.get(name);
  const seen = [];
  await within(chV.subscribe((m) => seen.push(msg(m))), 10000, 'viewer subscribe');
  await within(chA.attach(), 10000, 'agent attach');

  step('one response, pipelined appends');
  const serial = (await within(chA.publish('reply', 'Hello'), 10000, 'create')).serials[0];
  const fragments = Array.from({ length: 20 }, (_, i) => ` t${i}`);
  const outcomes = await pipelined(chA, serial, fragments);
  const closing = await within(chA.publish('ai-run-end', 'done'), 10000, 'run end');
  await until(() => seen.some((m) => m.serial === closing.serials[0]), 10000, 'viewer to see the run end');

  step('two responses interleaved on the default window');
  const other = await connected(realtime({ clientId: 'agent2' }));
  const chO = other.channels.get(name);
  const s1 = (await within(chO.publish('a', ''), 10000, 'create a')).serials[0];
  const s2 = (await within(chO.publish('b', ''), 10000, 'create b')).serials[0];
  const words = Array.from({ length: 30 }, (_, i) => `w${i} `);
  await within(
    Promise.all(words.flatMap((w) => [chO.appendMessage({ serial: s1, data: w }), chO.appendMessage({ serial: s2, data: w.toUpperCase() })])),
    20000,
    'interleaved appends',
  );
  const text1 = words.join('');
  const fold = (s) => seen.filter((m) => m.serial === s).map((m) => m.data).join('');
  await until(() => fold(s1) === text1 && fold(s2) === text1.toUpperCase(), 10000, 'both texts');

  step('history');
  const history = await within(chV.history(), 10000, 'history');

  step('invalid window');
  const bad = realtime({ clientId: 'bad', transportParams: { appendRollupWindow: 501 } });
  const state = await within(
    new Promise((resolve) => bad.connection.on((c) => (c.current === 'failed' || c.current === 'disconnected') && resolve(c))),
    15000,
    'invalid window to be refused',
  );
  bad.close();
  return {
    serial,
    outcomes,
    text: `Hello${fragments.join('')}`,
    closing: closing.serials[0],
    seen,
    interleaved: { s1, s2, text: text1, appends: [s1, s2].map((s) => seen.filter((m) => m.serial === s && m.action === 'message.append').length), sent: words.length },
    history: history.items.map(msg),
    refused: { state: state.current, code: state.reason?.code ?? null },
  };
}

main(() => (config.limits ? limits() : stream()));
