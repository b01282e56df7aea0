// Basic key auth, time(), ping, attach/detach, publish -> serials, echo, extras, ephemeral,
// REST publish/history paging, mutable messages over REST and realtime, maxMessageSize.
// Prints observations; tests/server_js/test_basics.py asserts on them.
import {
  allPages,
  binary,
  config,
  connected,
  errorOf,
  main,
  msg,
  realtime,
  rest,
  step,
  until,
  within,
} from './lib.mjs';

const ns = config.ns;

function collector(channel, name) {
  const seen = [];
  const listener = (m) => seen.push(msg(m));
  return name ? channel.subscribe(name, listener).then(() => seen) : channel.subscribe(listener).then(() => seen);
}

main(async () => {
  const out = {};

  step('rest time');
  const r = rest();
  out.time = { server: await within(r.time(), 10000, 'time()'), local: Date.now() };

  step('connect with key');
  const a = await connected(realtime({ clientId: 'alice' }));
  const b = await connected(realtime({ clientId: 'bob' }));
  const c = await connected(realtime({ clientId: 'carol', echoMessages: false }));
  // dave speaks the other wire format: the server must transcode (binary <-> base64) between them
  const d = await connected(realtime({ clientId: 'dave', useBinaryProtocol: !binary }));
  out.connection = {
    aId: a.connection.id,
    bId: b.connection.id,
    aHasKey: Boolean(a.connection.key),
    aClientId: a.auth.clientId,
  };

  step('ping');
  out.ping = await within(a.connection.ping(), 10000, 'ping');

  step('attach');
  const name = `${ns}:basics`;
  const chA = a.channels.get(name);
  const chB = b.channels.get(name);
  const chC = c.channels.get(name);
  const change = await within(chA.attach(), 10000, 'attach A');
  await within(chB.attach(), 10000, 'attach B');
  await within(chC.attach(), 10000, 'attach C');
  const chD = d.channels.get(name);
  out.attach = { state: chA.state, resumed: change ? change.resumed : null, modes: chA.modes ?? null };

  const seenA = await collector(chA);
  const seenB = await collector(chB);
  const seenC = await collector(chC);
  const seenD = await collector(chD);

  step('publish -> serials');
  const extras = {
    headers: { 'x-kind': 'greeting', n: '1' },
    ai: { transport: { status: 'streaming', ids: [1, 2, 3] } },
    flag: true,
    num: 12.5,
    text: 'unicode ✓ ünï',
  };
  const single = await within(chA.publish('one', 'hello'), 10000, 'publish one');
  const batch = await within(
    chA.publish([
      { name: 'two', data: { structured: [1, 'x'] } },
      { name: 'three', data: 'with extras', extras },
    ]),
    10000,
    'publish batch',
  );
  const ephemeral = await within(
    chA.publish({ name: 'eph', data: 'ephemeral', extras: { ephemeral: true } }),
    10000,
    'publish ephemeral',
  );
  const binaryPub = await within(chA.publish('bin', Buffer.from([0, 1, 2, 250])), 10000, 'publish binary');
  out.publish = { single, batch, ephemeral, binary: binaryPub };

  step('deliveries');
  await until(() => seenB.length >= 5, 10000, 'B to receive 5 messages');
  await until(() => seenA.length >= 5, 10000, 'A to receive its 5 echoes');
  // carol has echo off: her own publish must not come back, alice's marker must.
  await within(chC.publish('carol-own', 'x'), 10000, 'carol publish');
  await within(chA.publish('marker-c', 'x'), 10000, 'marker publish');
  await until(() => seenC.some((m) => m.name === 'marker-c'), 10000, 'carol to receive marker');
  await until(() => seenB.some((m) => m.name === 'marker-c'), 10000, 'bob to receive marker');
  out.seenA = seenA.slice();
  out.seenB = seenB.slice();
  out.seenC = seenC.slice();
  await until(() => seenD.some((m) => m.name === 'marker-c'), 10000, 'dave to receive marker');
  out.seenD = seenD.slice();

  step('history (extras verbatim, ephemeral absent)');
  const hist = await allPages(await within(chB.history({ limit: 100 }), 10000, 'history'));
  out.history = hist.items.map(msg);
  const histD = await allPages(await within(chD.history({ limit: 100 }), 10000, 'history, other format'));
  out.historyOtherFormat = histD.items.map(msg);

  step('detach');
  await within(chB.detach(), 10000, 'detach B');
  out.detachState = chB.state;
  await within(chA.publish('while-detached', 'x'), 10000, 'publish while detached');
  await within(chB.attach(), 10000, 're-attach B');
  await within(chA.publish('after-reattach', 'x'), 10000, 'publish after re-attach');
  await until(() => seenB.some((m) => m.name === 'after-reattach'), 10000, 'B to receive after-reattach');
  out.seenBAfterDetach = seenB.slice(out.seenB.length).map((m) => m.name);

  step('rest publish + paging');
  const restCh = r.channels.get(`${ns}:rest`);
  const restPub = await within(
    restCh.publish([1, 2, 3, 4, 5].map((i) => ({ name: `r${i}`, data: `d${i}`, extras: { headers: { i: String(i) } } }))),
    10000,
    'rest publish',
  );
  const back = await allPages(await within(restCh.history({ limit: 2 }), 10000, 'history backwards'));
  const fwd = await allPages(await within(restCh.history({ limit: 2, direction: 'forwards' }), 10000, 'history fwd'));
  out.rest = {
    publish: restPub,
    backwards: back.items.map((m) => m.name),
    backwardsPages: back.pages,
    forwards: fwd.items.map((m) => m.name),
    forwardsPages: fwd.pages,
    extras: fwd.items.map((m) => m.extras ?? null),
  };

  step('idempotent rest publish');
  const idemCh = r.channels.get(`${ns}:idem`);
  const idem1 = await within(idemCh.publish({ id: 'fixed-id:0', name: 'idem', data: 'once' }), 10000, 'idem 1');
  const idem2 = await within(idemCh.publish({ id: 'fixed-id:0', name: 'idem', data: 'once' }), 10000, 'idem 2');
  const idemHist = await within(idemCh.history(), 10000, 'idem history');
  out.idempotent = { first: idem1, second: idem2, history: idemHist.items.map(msg) };

  step('rest mutable messages');
  const target = restPub.serials[0];
  const got = msg(await within(restCh.getMessage(target), 10000, 'getMessage'));
  const upd = await within(
    restCh.updateMessage({ serial: target, data: 'edited' }, { description: 'fix typo', metadata: { k: 'v' } }),
    10000,
    'rest updateMessage',
  );
  const afterUpdate = msg(await within(restCh.getMessage(target), 10000, 'getMessage after update'));
  const del = await within(restCh.deleteMessage({ serial: target }, { description: 'gone' }), 10000, 'rest delete');
  const afterDelete = msg(await within(restCh.getMessage(target), 10000, 'getMessage after delete'));
  const versions = await allPages(await within(restCh.getMessageVersions(target), 10000, 'getMessageVersions'));
  const histAfter = await allPages(await within(restCh.history({ limit: 100 }), 10000, 'history after mutate'));
  out.mutable = {
    target,
    got,
    update: upd,
    afterUpdate,
    delete: del,
    afterDelete,
    versions: versions.items.map(msg),
    history: histAfter.items.map(msg),
  };

  step('realtime mutable messages');
  const base = out.publish.single.serials[0];
  const rtUpd = await within(chA.updateMessage({ serial: base, data: 'hello, edited' }, { description: 'rt' }), 10000, 'rt update');
  const rtDel = await within(chA.deleteMessage({ serial: base }), 10000, 'rt delete');
  await until(() => seenB.some((m) => m.action === 'message.delete'), 10000, 'B to receive the delete');
  out.realtimeMutable = {
    update: rtUpd,
    delete: rtDel,
    seenB: seenB.filter((m) => m.serial === base).map((m) => ({ action: m.action, data: m.data, version: m.version })),
  };

  step('max message size');
  const big = 'x'.repeat(config.maxMessageSize + 100);
  out.maxMessageSize = {
    // ably-js checks against the limit the server advertised in connectionDetails
    realtimePublish: await errorOf(chA.publish('big', big), 10000, 'big publish'),
    // a REST client that claims a larger limit is refused by the server itself
    restPublish: await errorOf(
      rest({ maxMessageSize: 10 * 1024 * 1024 }).channels.get(`${ns}:rest`).publish('big', big),
      10000,
      'big rest publish',
    ),
    // appends skip the client-side check, so the server must refuse them too
    realtimeAppend: await errorOf(chA.appendMessage({ serial: batch.serials[1], data: big }), 10000, 'big append'),
    connectionStateAfter: a.connection.state,
    channelStateAfter: chA.state,
  };
  return out;
});
