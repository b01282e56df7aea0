// The official @ably/ai-transport 0.8.0 client folding a session written by `agent-worker chat`.
//
// AW_NODE_CONFIG = {host, port, protocol, session, token, mode}
//   mode "history": attach after the conversation happened and page the whole history into the view
//                   (a late joiner), then print view.getMessages().
//   mode "live":    attach first, tell the host (ctl {op: "attached"}), then fold live traffic until
//                   the host answers ctl {op: "done"} with {messages: N}; wait for N visible messages
//                   and no active run, then print view.getMessages().
import { createClientSession } from '@ably/ai-transport/vercel';

import { config, connected, ctl, main, realtime, step, until, within } from '../server/lib.mjs';

const snapshot = (session) =>
  session.view.getMessages().map((m) => ({ codecMessageId: m.codecMessageId, message: m.message }));

main(async () => {
  step('connect');
  const client = await connected(realtime({ token: config.token }));
  const session = createClientSession({ client, channelName: config.session });
  const errors = [];
  session.on('error', (err) => errors.push({ code: err.code ?? null, message: String(err.message) }));
  await within(session.connect(), 10000, 'session connect');

  if (config.mode === 'live') {
    step('live');
    await ctl({ op: 'attached' });
    const { messages } = await ctl({ op: 'done' }, 60000);
    const runs = () => session.view.runs();
    await until(
      () => session.view.getMessages().length >= messages && !runs().some((r) => r.status === 'active'),
      20000,
      `${messages} messages and no active run`,
    );
  } else {
    step('history');
    let guard = 0;
    while (session.view.hasOlder() && guard++ < 100) await within(session.view.loadOlder(100), 10000, 'loadOlder');
  }
  step('close');
  const messages = snapshot(session);
  const runs = session.view.runs().map((r) => ({ runId: r.runId, status: r.status }));
  await session.close();
  return { messages, runs, errors, clientId: client.auth.clientId };
});
