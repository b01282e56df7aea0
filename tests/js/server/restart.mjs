// History across a server restart with a data dir: phase "write" publishes plain and appended
// messages, phase "read" (against the restarted server) reads them back and publishes once more.
import { allPages, config, connected, main, msg, realtime, step, within } from './lib.mjs';

const channelName = `${config.ns}:durable`;

main(async () => {
  step('connect');
  // Compares each append's versionSerial with history: server-side rollup (rollup.mjs) is off.
  const client = await connected(realtime({ clientId: 'keeper', transportParams: { appendRollupWindow: 0 } }));
  const ch = client.channels.get(channelName);
  await within(ch.attach(), 10000, 'attach');
  if (config.phase === 'write') {
    step('write');
    const plain = await within(ch.publish([{ name: 'a', data: 'first' }, { name: 'b', data: { n: 2 } }]), 10000, 'publish');
    const streamed = (await within(ch.publish('s', 'Hel'), 10000, 'create')).serials[0];
    const appends = await within(
      Promise.all(['lo', ' there'].map((data) => ch.appendMessage({ serial: streamed, data }))),
      10000,
      'appends',
    );
    return { serials: [...plain.serials, streamed], versions: appends.map((r) => r.versionSerial) };
  }
  step('read');
  const before = await allPages(await within(ch.history({ limit: 100, direction: 'forwards' }), 10000, 'history'));
  const untilAttach = await allPages(await within(ch.history({ untilAttach: true, limit: 2 }), 10000, 'untilAttach'));
  const fresh = (await within(ch.publish('c', 'after restart'), 10000, 'publish after restart')).serials[0];
  return {
    history: before.items.map(msg),
    untilAttach: untilAttach.items.map(msg),
    fresh,
  };
});
