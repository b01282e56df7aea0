// Differential oracle for the Python conversation tree + client view: a real @ably/ai-transport 0.8.0
// ClientSession (Vercel codec) over an in-memory fake channel. Messages are delivered through the
// subscribe listener (live) and/or served by channel.history() (newest first, in pages) and revealed
// with view.loadOlder().
//
// AW_NODE_CONFIG = {live: [msg], history: [msg oldest-first], pageSize?, clientId?, runIds: [id],
//                   eventIds: [id], codecMessageIds: [id]}
// Result: {messages: view.getMessages(), runs: {id: RunNode summary}, events: {id: serial|null},
//          nodes: {cmid: node key|null}}
import { createClientSession } from '@ably/ai-transport';
import { createUIMessageCodec } from '@ably/ai-transport/vercel';

const config = JSON.parse(process.env.AW_NODE_CONFIG ?? '{}');
const withVersion = (m) => ({ ...m, version: m.version ?? {} });

const makeChannel = (name) => {
  const listeners = new Set();
  const history = (config.history ?? []).map(withVersion);
  const pageSize = config.pageSize ?? 100;
  const page = (end) => {
    // Newest first, like the REST history endpoint; `end` = exclusive upper index into oldest-first.
    const start = Math.max(0, end - pageSize);
    const items = history.slice(start, end).reverse();
    return {
      items,
      hasNext: () => start > 0,
      isLast: () => start === 0,
      next: async () => (start > 0 ? page(start) : null),
    };
  };
  const channel = {
    name,
    state: 'initialized',
    presence: {},
    object: {},
    subscribe: async (listener) => {
      listeners.add(listener);
    },
    unsubscribe: (listener) => {
      listeners.delete(listener);
    },
    attach: async () => {
      channel.state = 'attached';
      return null;
    },
    detach: async () => {
      channel.state = 'detached';
    },
    on: () => {},
    off: () => {},
    history: async () => page(history.length),
    publish: async () => ({ serials: [] }),
    deliver: (m) => {
      for (const l of listeners) l(withVersion(m));
    },
  };
  return channel;
};

try {
  const channel = makeChannel('conversations:abc');
  const client = {
    auth: { clientId: config.clientId ?? 'user-abc' },
    options: {},
    channels: { get: () => channel },
  };
  const session = createClientSession({ client, channelName: channel.name, codec: createUIMessageCodec() });
  await session.connect();
  for (const m of config.live ?? []) channel.deliver(m);
  const view = session.view;
  for (let i = 0; i < 1000 && view.hasOlder(); i++) await view.loadOlder(1000);
  const tree = session.tree;
  const runs = {};
  for (const id of config.runIds ?? []) {
    const n = tree.getRunNode(id);
    runs[id] = n
      ? {
          status: n.state.status,
          error: n.state.error ? { code: n.state.error.code, message: n.state.error.message } : null,
          parent: n.parentCodecMessageId ?? null,
          regenerates: n.regeneratesCodecMessageId ?? null,
          startSerial: n.startSerial ?? null,
          steps: n.steps.map((s) => ({ stepId: s.stepId, status: s.status, attemptCount: s.attemptCount })),
          messages: n.projection.messages.map((m) => m.codecMessageId),
        }
      : null;
  }
  const events = {};
  for (const id of config.eventIds ?? []) events[id] = tree.findAblyMessageByEventId(id)?.serial ?? null;
  const nodes = {};
  for (const id of config.codecMessageIds ?? []) {
    const n = tree.getNodeByCodecMessageId(id);
    nodes[id] = n ? (n.kind === 'run' ? n.runId : n.codecMessageId) : null;
  }
  const messages = JSON.parse(JSON.stringify(view.getMessages()));
  await session.close();
  console.log(`@@result ${JSON.stringify({ ok: true, messages, runs, events, nodes })}`);
} catch (error) {
  console.log(`@@result ${JSON.stringify({ ok: false, error: String(error?.stack ?? error) })}`);
}
