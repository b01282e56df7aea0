// Where an app can tell the embedded server from Ably (issue 16): channel modes and params, rewind
// backlog, recover, connection keys, token expiry, capabilities, restricted keys, channel rules.
// Expectations follow Ably's behaviour as pinned by ably-js's own realtime/rest suites.
import { config, connected, ctl, errorOf, main, realtime, rest, sleep, step, until, within } from './lib.mjs';

const ns = config.ns; // no channel rule: Ably's defaults (no mutable messages, 2-minute history)
const mut = `conversations:${ns}`; // the namespace with the mutable-messages rule

async function attached(channel, what) {
  return within(channel.attach(), 10000, `attach ${what}`);
}

/** Subscribes and collects message data; resolves once attached. */
async function collect(channel, what) {
  const got = [];
  await within(
    channel.subscribe((m) => got.push(m.data)),
    10000,
    `subscribe ${what}`,
  );
  return got;
}

main(async () => {
  const out = {};
  const client = await connected(realtime());
  const publisher = rest();

  step('params.modes wins over modes flags');
  {
    const ch = client.channels.get(`${ns}:modes-params`, {
      params: { modes: 'presence,subscribe' },
      modes: ['publish', 'presence_subscribe'],
    });
    await attached(ch, 'modes-params');
    out.paramsModes = {
      modes: ch.modes,
      params: ch.params,
      publish: await errorOf(ch.publish('x', 'y'), 10000, 'publish without PUBLISH'),
      enter: await errorOf(ch.presence.enterClient('member-1', null), 10000, 'enter with PRESENCE'),
    };
  }

  step('modes flags are enforced');
  {
    const ch = client.channels.get(`${ns}:modes-subscribe`, { modes: ['subscribe'] });
    await attached(ch, 'modes-subscribe');
    out.subscribeOnly = {
      modes: ch.modes,
      publish: await errorOf(ch.publish('x', 'y'), 10000, 'publish subscribe-only'),
      enter: await errorOf(ch.presence.enterClient('member-2', null), 10000, 'enter subscribe-only'),
      state: ch.state,
      connection: client.connection.state,
    };
  }

  step('unknown params are dropped, unsupported ones refused');
  {
    const ch = client.channels.get(`${ns}:params`, { params: { nonexistent: 'foo', rewind: '1' } });
    await attached(ch, 'params');
    const occupancy = client.channels.get(`${ns}:occupancy`, { params: { occupancy: 'metrics' } });
    const derived = client.channels.getDerived(`${ns}:derived`, { filter: "name == 'wanted'" });
    out.params = {
      echoed: ch.params,
      occupancy: await errorOf(occupancy.attach(), 10000, 'attach with occupancy'),
      derived: await errorOf(derived.attach(), 10000, 'attach derived channel'),
      qualified: await errorOf(client.channels.get(`[?rewind=1]${ns}:q`).attach(), 10000, 'attach [?rewind=1]'),
    };
  }

  step('HAS_BACKLOG after a rewind attach');
  {
    const empty = client.channels.get(`${ns}:backlog-0`, { params: { rewind: '1' } });
    const emptyChange = await attached(empty, 'backlog-0');
    await within(publisher.channels.get(`${ns}:backlog-1`).publish('m', 'first'), 10000, 'publish first');
    await within(publisher.channels.get(`${ns}:backlog-1`).publish('m', 'second'), 10000, 'publish second');
    const full = client.channels.get(`${ns}:backlog-1`, { params: { rewind: '1' } });
    let fullChange = null;
    full.once('attached', (change) => {
      fullChange = change;
    });
    const got = await collect(full, 'backlog-1');
    await until(() => got.length >= 1, 10000, 'rewound message');
    out.backlog = { empty: emptyChange.hasBacklog, full: fullChange?.hasBacklog ?? null, rewound: got };
  }

  step('a re-attach (ATTACH_RESUME) is not rewound again after continuity loss');
  {
    const name = `${ns}:rewind-once`;
    await within(publisher.channels.get(name).publish('m', 'old'), 10000, 'publish old');
    const other = await connected(realtime({ clientId: 'rewinder' }));
    const ch = other.channels.get(name, { params: { rewind: '1' } });
    const got = await collect(ch, 'rewind-once');
    await until(() => got.length === 1, 10000, 'rewound message');
    const firstId = other.connection.id;
    await ctl({ drop: 'rewinder', resume: false });
    await until(() => other.connection.state === 'connected' && other.connection.id !== firstId, 20000, 'new connection');
    await until(() => ch.state === 'attached', 10000, 're-attached');
    await within(publisher.channels.get(name).publish('m', 'new'), 10000, 'publish new');
    await until(() => got.includes('new'), 10000, 'live message');
    await sleep(300);
    out.rewindOnce = got;
    other.close();
  }

  step('recover of a live connection');
  {
    const first = await connected(realtime());
    const ch = first.channels.get(`${ns}:recover`);
    await attached(ch, 'recover');
    const id = first.connection.id;
    const key = first.connection.key;
    const recoveryKey = first.connection.createRecoveryKey();
    let firstReason = null;
    first.connection.on('connected', (change) => {
      firstReason = change.reason?.code ?? null;
    });
    const second = realtime({ recover: recoveryKey });
    const change = await within(second.connection.once('connected'), 10000, 'recovered connection');
    await until(() => first.connection.id !== id && first.connection.state === 'connected', 20000, 'old client moved on');
    await sleep(500);
    out.recover = {
      sameId: second.connection.id === id,
      newKey: second.connection.key !== key,
      reason: change.reason?.code ?? null,
      secondStillId: second.connection.id === id,
      oldClientReason: firstReason,
      oldClientNewId: first.connection.id !== id,
    };
    first.close();
  }

  step('unrecoverable connection key');
  {
    const fake = JSON.stringify({ connectionKey: '_____!ablyjs_test_fake-key____', msgSerial: 3, channelSerials: {} });
    const rt = realtime({ recover: fake });
    const change = await within(rt.connection.once('connected'), 10000, 'connect with a fake key');
    out.unrecoverable = { reason: change.reason?.code ?? null, keyReplaced: !rt.connection.key.includes('ablyjs_test_fake') };
    rt.close();
  }

  step('REST publish on behalf of a realtime connection');
  {
    const ch = client.channels.get(`${ns}:behalf`);
    const got = [];
    await within(ch.subscribe((m) => got.push(m)), 10000, 'subscribe behalf');
    await within(
      publisher.channels.get(`${ns}:behalf`).publish({ name: 'foo', data: 'bar', connectionKey: client.connection.key }),
      10000,
      'publish on behalf',
    );
    await until(() => got.length === 1, 10000, 'message on behalf');
    out.onBehalf = {
      connectionId: got[0].connectionId,
      expected: client.connection.id,
      badKey: await errorOf(
        publisher.channels.get(`${ns}:behalf`).publish({ name: 'foo', data: 'bar', connectionKey: 'nope!nope.0000' }),
        10000,
        'publish with a bad key',
      ),
    };
  }

  step('token expiry in milliseconds; invalid capabilities');
  {
    const details = await within(publisher.auth.requestToken({ ttl: 1 }), 10000, 'requestToken ttl 1');
    await sleep(50);
    const expired = rest({ token: details.token });
    out.tokens = {
      ttl: details.expires - details.issued,
      expiredUse: await errorOf(expired.channels.get(`${ns}:tok`).history(), 10000, 'use expired token'),
      invalidStar: await errorOf(
        publisher.auth.requestToken({ capability: { channel0: ['*', 'publish'] } }),
        10000,
        'invalid capability',
      ),
      invalidOp: await errorOf(publisher.auth.requestToken({ capability: { channel0: ['publish_'] } }), 10000, 'bad op'),
    };
  }

  step('a key with a capability');
  {
    const restricted = rest({ key: config.restrictedKey });
    const details = await within(
      restricted.auth.requestToken({ capability: { [`${config.restrictedNs}:*`]: ['*'] } }),
      10000,
      'intersected token',
    );
    const rt = await connected(realtime({ key: config.restrictedKey }));
    const inside = rt.channels.get(`${config.restrictedNs}:inside:1`);
    await attached(inside, 'inside');
    out.restricted = {
      capability: JSON.parse(details.capability),
      outside: await errorOf(rt.channels.get(`${config.restrictedNs}:outside`).attach(), 10000, 'attach outside'),
      inside: inside.state,
      emptyIntersection: await errorOf(
        restricted.auth.requestToken({ capability: { 'elsewhere:*': ['publish'] } }),
        10000,
        'empty intersection',
      ),
    };
    rt.close();
  }

  step('channel rules: mutable messages, identified only, persistence');
  {
    const plain = client.channels.get(`${ns}:immutable`);
    const { serials } = await within(plain.publish('m', 'text'), 10000, 'publish immutable');
    const mutable = client.channels.get(`${mut}:stream`);
    const created = await within(mutable.publish('m', 'te'), 10000, 'publish mutable');
    const anon = await connected(realtime());
    const named = await connected(realtime({ clientId: 'named' }));
    const before = await within(publisher.channels.get(`${ns}:ephemeral`).publish('m', 'short-lived'), 10000, 'publish');
    await within(publisher.channels.get(`${mut}:kept`).publish('m', 'kept'), 10000, 'publish kept');
    out.rules = {
      append: await errorOf(plain.appendMessage({ serial: serials[0], data: 'more' }), 10000, 'append immutable'),
      update: await errorOf(plain.updateMessage({ serial: serials[0], data: 'edited' }), 10000, 'update immutable'),
      restUpdate: await errorOf(
        publisher.channels.get(`${ns}:immutable`).updateMessage({ serial: serials[0], data: 'edited' }),
        10000,
        'rest update immutable',
      ),
      mutableAppend: (await within(mutable.appendMessage({ serial: created.serials[0], data: 'xt' }), 10000, 'append')).versionSerial
        ? 'ok'
        : 'no serial',
      anonAttach: await errorOf(anon.channels.get('private:room').attach(), 10000, 'anonymous attach'),
      anonRest: await errorOf(publisher.channels.get('private:room').publish('m', 'x'), 10000, 'anonymous rest'),
      namedAttach: await errorOf(named.channels.get('private:room').attach(), 10000, 'identified attach'),
      published: before.serials.length,
    };
    await sleep(config.unpersistedMs + 500);
    const ephemeral = await within(publisher.channels.get(`${ns}:ephemeral`).history(), 10000, 'history ephemeral');
    const kept = await within(publisher.channels.get(`${mut}:kept`).history(), 10000, 'history kept');
    out.rules.history = { ephemeral: ephemeral.items.map((m) => m.data), kept: kept.items.map((m) => m.data) };
    anon.close();
    named.close();
  }
  return out;
});
