// Forced connection drops (server.drop_connections via the ctl channel) in the middle of a stream of
// publishes and pipelined appends: both clients must resume (same connection id), every re-attach
// must be RESUMED, and the subscriber must see every message exactly once and the full text.
import { config, connected, ctl, main, msg, realtime, sleep, step, until, within } from './lib.mjs';

const channelName = `${config.ns}:resume`;
const COUNT = 60;
const DROPS = { 15: { op: 'drop' }, 40: { op: 'drop', clientId: 'watcher' } };

function watch(client, channel, log) {
  client.connection.on((c) => log.push({ kind: 'connection', state: c.current, code: c.reason?.code ?? null, id: client.connection.id }));
  // ably-js passes the event name (a state or 'update') as `this.event`
  channel.on(function (c) {
    log.push({ kind: 'channel', event: this.event, state: c.current, resumed: c.resumed, code: c.reason?.code ?? null });
  });
}

/** AIT-style fold of one appended message: replace on create/update, concat on newer appends. */
function folder() {
  const state = { text: null, version: '', applied: 0, stale: 0, actions: [] };
  state.add = (m) => {
    state.actions.push(m.action);
    const v = m.version?.serial ?? m.serial;
    if (state.version && v <= state.version) {
      state.stale += 1;
      return;
    }
    state.version = v;
    state.applied += 1;
    state.text = m.action === 'message.append' ? (state.text ?? '') + m.data : m.data;
  };
  return state;
}

main(
  async () => {
    const out = { agentLog: [], watcherLog: [], drops: [] };
    step('connect');
    // Checks each append's versionSerial across the resume: server-side rollup (rollup.mjs) is off.
    const agent = await connected(realtime({ clientId: 'agent', transportParams: { appendRollupWindow: 0 } }));
    const watcher = await connected(realtime({ clientId: 'watcher' }));
    const chA = agent.channels.get(channelName);
    const chW = watcher.channels.get(channelName);
    await within(chA.attach(), 10000, 'agent attach');
    const plain = [];
    const stream = folder();
    let streamSerial = null;
    await within(
      chW.subscribe((m) => {
        if (m.name === 'stream' || (streamSerial && m.serial === streamSerial)) stream.add(msg(m));
        else plain.push(msg(m));
      }),
      10000,
      'watcher subscribe',
    );
    watch(agent, chA, out.agentLog);
    watch(watcher, chW, out.watcherLog);
    const ids = { agent: agent.connection.id, watcher: watcher.connection.id };

    step('stream with drops');
    streamSerial = (await within(chA.publish('stream', ''), 10000, 'stream create')).serials[0];
    const pending = [];
    let expected = '';
    for (let i = 0; i < COUNT; i++) {
      if (DROPS[i]) {
        const answer = await ctl(DROPS[i]);
        out.drops.push({ at: i, ...DROPS[i], answer });
      }
      pending.push(chA.publish(`m-${i}`, String(i)));
      pending.push(chA.appendMessage({ serial: streamSerial, data: `t${i} ` }));
      expected += `t${i} `;
      await sleep(5);
    }
    step('awaiting ACKs');
    const results = await within(Promise.all(pending), 45000, 'all publishes and appends to be ACKed');
    const end = (await within(chA.publish('end', 'done'), 10000, 'end publish')).serials[0];
    await until(() => plain.some((m) => m.serial === end), 30000, 'watcher to see end marker');
    await until(() => stream.text === expected, 10000, 'watcher stream text to complete');

    out.ids = { before: ids, after: { agent: agent.connection.id, watcher: watcher.connection.id } };
    out.expectedText = expected;
    out.stream = { text: stream.text, applied: stream.applied, stale: stream.stale, actions: stream.actions };
    out.plain = plain.map((m) => ({ name: m.name, serial: m.serial }));
    out.publishSerials = results.filter((_, i) => i % 2 === 0).map((r) => r.serials[0]);
    out.appendVersions = results.filter((_, i) => i % 2 === 1).map((r) => r.versionSerial);
    out.finalStates = { agent: agent.connection.state, watcher: watcher.connection.state, chA: chA.state, chW: chW.state };
    // snapshot: the harness closes the clients after we return, which would log their detach
    return JSON.parse(JSON.stringify(out));
  },
  { timeoutMs: 90000 },
);
