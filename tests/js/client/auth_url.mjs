// ably-js fetching its token from the dev token endpoint (`authUrl`), then using the channel.
// AW_NODE_CONFIG = {host, port, protocol, authUrl, clientId, channel}
import { config, connected, errorOf, main, realtime, step, within } from '../server/lib.mjs';

main(async () => {
  step('connect via authUrl');
  const client = await connected(
    realtime({ authUrl: config.authUrl, authParams: { clientId: config.clientId }, clientId: config.clientId }),
  );
  const ch = client.channels.get(config.channel);
  step('publish');
  await within(ch.publish('hello', 'from a browser-like client'), 10000, 'publish');
  step('forbidden channel');
  const refused = await errorOf(client.channels.get('private:elsewhere').attach(), 10000, 'attach elsewhere');
  return { clientId: client.auth.clientId, refused };
});
