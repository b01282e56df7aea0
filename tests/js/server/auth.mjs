// Token auth in every shape ably-js supports (literal JWT from server.mint_token, authCallback,
// authUrl, TokenRequest -> requestToken) and capability scoping of a `conversations:alice:*` token.
import { createServer } from 'node:http';
import { allPages, config, connected, errorOf, main, msg, realtime, rest, step, within } from './lib.mjs';

const ns = config.ns;

/** Connects, publishes one message, reads it back through history; returns what it saw. */
async function roundTrip(client, channelName) {
  await connected(client);
  const ch = client.channels.get(channelName);
  await within(ch.attach(), 10000, `attach ${channelName}`);
  const result = await within(ch.publish('tok', 'via token'), 10000, 'publish');
  const hist = await allPages(await within(ch.history({ limit: 10 }), 10000, 'history'));
  return {
    clientId: client.auth.clientId ?? null,
    connectionId: client.connection.id,
    serials: result.serials,
    history: hist.items.map(msg),
  };
}

/** A one-route authUrl endpoint serving `body` with `contentType`; returns its URL and closer. */
async function authEndpoint(body, contentType) {
  const hits = [];
  const server = createServer((req, res) => {
    hits.push(req.url);
    res.writeHead(200, { 'content-type': contentType });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/auth`, hits, close: () => server.close() };
}

main(async () => {
  const out = {};

  step('bad key');
  const [keyName] = config.key.split(':');
  const bad = realtime({ key: `${keyName}:not-the-secret` });
  await within(bad.connection.whenState('failed'), 10000, 'bad key to fail');
  out.badKey = { state: bad.connection.state, code: bad.connection.errorReason?.code ?? null };

  step('literal JWT from mint_token');
  out.literal = await roundTrip(realtime({ token: config.token }), `${ns}:tok-literal`);

  step('authCallback returning a JWT');
  let callbackCalls = 0;
  out.authCallback = await roundTrip(
    realtime({
            authCallback: (_params, cb) => {
        callbackCalls += 1;
        cb(null, config.token);
      },
    }),
    `${ns}:tok-callback`,
  );
  out.authCallback.calls = callbackCalls;

  step('authUrl serving a JWT');
  const endpoint = await authEndpoint(config.token, 'application/jwt');
  try {
    out.authUrl = await roundTrip(realtime({ authUrl: endpoint.url }), `${ns}:tok-url`);
    out.authUrl.hits = endpoint.hits.length;
  } finally {
    endpoint.close();
  }

  step('TokenRequest via authCallback -> requestToken');
  const signer = rest();
  let tokenRequest = null;
  out.tokenRequest = await roundTrip(
    realtime({
            authCallback: async (_params, cb) => {
        tokenRequest = await signer.auth.createTokenRequest({ clientId: 'tr-user' });
        cb(null, tokenRequest);
      },
    }),
    `${ns}:tok-request`,
  );
  out.tokenRequest.keyName = tokenRequest?.keyName ?? null;

  step('auth.requestToken from a key client');
  const details = await within(signer.auth.requestToken({ clientId: 'rt-user', ttl: 60000 }), 10000, 'requestToken');
  out.requestToken = {
    hasToken: typeof details.token === 'string' && details.token.length > 0,
    clientId: details.clientId ?? null,
    ttlMs: details.expires - details.issued,
    capability: details.capability,
  };
  const tokenRest = rest({ token: details.token });
  const restPub = await within(tokenRest.channels.get(`${ns}:tok-rest`).publish('r', 'rest via token'), 10000, 'rest pub');
  const restHist = await within(tokenRest.channels.get(`${ns}:tok-rest`).history(), 10000, 'rest history');
  out.requestToken.restPublish = restPub;
  out.requestToken.restHistory = restHist.items.map(msg);

  step('scoped token: allowed channel');
  const scoped = await connected(realtime({ token: config.scopedToken }));
  const mine = scoped.channels.get('conversations:alice:1');
  await within(mine.attach(), 10000, 'attach own channel');
  const minePub = await within(mine.publish('ok', 'allowed'), 10000, 'publish own channel');
  const mineHist = await within(mine.history(), 10000, 'history own channel');
  out.scoped = {
    clientId: scoped.auth.clientId ?? null,
    allowed: { state: mine.state, serials: minePub.serials, history: mineHist.items.map((m) => m.data) },
  };

  step('scoped token: other channels');
  const other = scoped.channels.get('conversations:bob-1');
  const attachErr = await errorOf(other.attach(), 10000, 'attach elsewhere');
  const publishErr = await errorOf(scoped.channels.get('conversations:bob-2').publish('no', 'x'), 10000, 'publish elsewhere');
  const historyErr = await errorOf(scoped.channels.get('conversations:bob-3').history(), 10000, 'history elsewhere');
  const scopedRest = rest({ token: config.scopedToken });
  const restPubErr = await errorOf(scopedRest.channels.get('conversations:bob-4').publish('no', 'x'), 10000, 'rest pub');
  const restHistErr = await errorOf(scopedRest.channels.get('conversations:bob-4').history(), 10000, 'rest history');
  const restOk = await within(scopedRest.channels.get('conversations:alice:2').publish('ok', 'x'), 10000, 'rest ok');
  out.scoped.denied = {
    attach: attachErr,
    attachState: other.state,
    publish: publishErr,
    history: historyErr,
    restPublish: restPubErr,
    restHistory: restHistErr,
  };
  out.scoped.restAllowed = restOk;
  // a refused operation must not take the connection or the allowed channel down
  out.scoped.afterwards = { connection: scoped.connection.state, allowedChannel: mine.state };
  const again = await within(mine.publish('still', 'fine'), 10000, 'publish after refusals');
  out.scoped.afterwards.serials = again.serials;
  return out;
});
