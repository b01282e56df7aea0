// Token renewal: an authCallback that fetches short-lived JWTs from the test (ctl "mint"); the
// server disconnects with 40142 when a token expires, ably-js renews and resumes; an explicit
// auth.authorize() re-authenticates in band. Messages keep flowing with no gap or duplicate.
import { config, connected, ctl, main, realtime, sleep, step, until, within } from './lib.mjs';

const channelName = `${config.ns}:tokens`;
const COUNT = 24;

main(
  async () => {
    const out = { log: [], calls: 0 };
    step('connect with authCallback');
    const client = realtime({
      authCallback: (_params, cb) => {
        out.calls += 1;
        ctl({ op: 'mint', ttl_s: config.ttlSeconds }).then((r) => cb(null, r.token), (e) => cb(e, null));
      },
    });
    await connected(client);
    const firstId = client.connection.id;
    client.connection.on((c) => out.log.push({ kind: 'connection', event: c.current, code: c.reason?.code ?? null, id: client.connection.id }));
    const ch = client.channels.get(channelName);
    const seen = [];
    await within(ch.subscribe((m) => seen.push(m.name)), 10000, 'subscribe');
    ch.on(function (c) {
      out.log.push({ kind: 'channel', event: this.event, resumed: c.resumed, code: c.reason?.code ?? null });
    });

    step('publish across token expiry');
    const acks = [];
    for (let i = 0; i < COUNT; i++) {
      acks.push(ch.publish(`m-${i}`, 'x'));
      await sleep(250);
    }
    await within(Promise.all(acks), 30000, 'publishes acknowledged');

    step('explicit authorize (in-band AUTH)');
    const callsBefore = out.calls;
    const details = await within(client.auth.authorize(), 10000, 'authorize');
    out.authorize = { newCall: out.calls > callsBefore, hasToken: Boolean(details.token), idAfter: client.connection.id };
    await within(ch.publish('end', 'x'), 10000, 'end publish');
    await until(() => seen.includes('end'), 15000, 'end marker');

    out.ids = { first: firstId, last: client.connection.id };
    out.clientId = client.auth.clientId ?? null;
    out.seen = seen.slice();
    out.states = { connection: client.connection.state, channel: ch.state };
    return JSON.parse(JSON.stringify(out));
  },
  { timeoutMs: 60000 },
);
