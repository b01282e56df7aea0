// echoMessages: false (transport parameter echo=false): a connection's own messages are not
// delivered back to it (publishes, appends, updates), other connections get them all, and
// presence is unaffected (Ably's echoMessages covers messages only: its own presence events
// still arrive).
import { config, connected, main, realtime, sleep, step, until, within } from './lib.mjs';

const channelName = `${config.ns}:echo`;

main(async () => {
  step('connect');
  const quiet = await connected(realtime({ clientId: 'quiet', echoMessages: false }));
  const other = await connected(realtime({ clientId: 'other' }));
  const chQ = quiet.channels.get(channelName);
  const chO = other.channels.get(channelName);
  const seenQ = [];
  const seenO = [];
  const presenceQ = [];
  await within(chQ.subscribe((m) => seenQ.push({ name: m.name, action: m.action, data: m.data ?? null, connectionId: m.connectionId })), 10000, 'quiet subscribe');
  await within(chQ.presence.subscribe((p) => presenceQ.push({ action: p.action, clientId: p.clientId })), 10000, 'quiet presence subscribe');
  await within(chO.subscribe((m) => seenO.push({ name: m.name, action: m.action, data: m.data ?? null })), 10000, 'other subscribe');

  step('publish, append, update from the quiet connection');
  const { serials } = await within(chQ.publish('mine', 'a'), 10000, 'publish');
  const serial = serials[0];
  await within(chQ.appendMessage({ serial, data: 'b' }), 10000, 'append');
  await within(chQ.updateMessage({ serial, data: 'abc' }), 10000, 'update');
  step('the other connection publishes');
  await within(chO.publish('theirs', 'x'), 10000, 'other publish');
  step('presence');
  await within(chQ.presence.enter('here'), 10000, 'enter');
  await until(() => seenQ.some((m) => m.name === 'theirs'), 10000, 'theirs at quiet');
  await until(() => presenceQ.some((p) => p.clientId === 'quiet'), 10000, 'own presence at quiet');
  await until(() => seenO.length >= 4, 10000, 'all four at other');
  await sleep(200); // anything echoed late would have arrived
  return { seenQ, seenO, presenceQ, quietId: quiet.connection.id };
});
