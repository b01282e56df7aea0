// Devices for the conformance scenarios: the official @ably/ai-transport 0.8.0 client side
// (ClientSession + Vercel ChatTransport) driven by the AI SDK's own useChat engine (`AbstractChat`)
// without React, against the embedded server and the Python worker.
//
// AW_NODE_CONFIG = {host, port, protocol, session, api, tokens: {clientId: jwt}, ...scenario fields}
// A device = one Ably connection (token auth, its own clientId) + ClientSession + ChatTransport +
// a useChat-equivalent Chat whose messages are kept in sync with the session view the way
// `useMessageSync` does (tree messages, overlaid with the chat's pending tool resolutions, applied
// only while the transport is not streaming an own run).
import { createChatTransport, createClientSession, createUIMessageCodec } from '@ably/ai-transport/vercel';
import { AbstractChat } from 'ai';

import { config, connected, realtime, sleep, within } from '../server/lib.mjs';

export const codec = createUIMessageCodec();

/** A ChatState backed by plain arrays (what @ai-sdk/react's Chat does with React state). */
class PlainChatState {
  constructor() {
    this.messages = [];
    this.status = 'ready';
    this.error = undefined;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), message, ...this.messages.slice(index + 1)];
  };
  snapshot = (thing) => structuredClone(thing);
}

export class TestChat extends AbstractChat {
  constructor(options) {
    super({ ...options, state: new PlainChatState() });
  }
}

// --- useMessageSync, minus React (src/vercel/react/use-message-sync.ts) -------------------------

const RESOLVED_TOOL_STATES = new Set(['output-available', 'output-error', 'approval-responded', 'output-denied']);
const isToolPart = (p) => typeof p?.type === 'string' && (p.type.startsWith('tool-') || p.type === 'dynamic-tool');

const mergeAssistant = (tree, overlay) => {
  const overlayByCallId = new Map();
  for (const part of overlay.parts) if (isToolPart(part)) overlayByCallId.set(part.toolCallId, part);
  if (overlayByCallId.size === 0) return tree;
  const parts = tree.parts.map((part) => {
    if (!isToolPart(part) || RESOLVED_TOOL_STATES.has(part.state)) return part;
    const o = overlayByCallId.get(part.toolCallId);
    if (!o || !RESOLVED_TOOL_STATES.has(o.state)) return part;
    return { ...o, type: part.type };
  });
  return parts.some((p, i) => p !== tree.parts[i]) ? { ...tree, parts } : tree;
};

const mergeMessages = (tree, overlay) => {
  if (overlay.length === 0) return tree;
  const byId = new Map(overlay.map((m) => [m.id, m]));
  return tree.map((t) => (t.role === 'assistant' && byId.has(t.id) ? mergeAssistant(t, byId.get(t.id)) : t));
};

// --- devices -------------------------------------------------------------------------------------

/**
 * Opens a device for `clientId` (a token minted by the test must be in config.tokens).
 * `history`: page the whole session history into the view first (a late joiner / second device).
 * `transportOptions`: more ChatTransport options (e.g. a `fetch` that routes each POST elsewhere).
 */
export async function device(clientId, { history = false, chatOptions = {}, transportOptions = {}, sync = true } = {}) {
  const token = config.tokens?.[clientId];
  if (!token) throw new Error(`no token for ${clientId} in AW_NODE_CONFIG.tokens`);
  const client = await connected(realtime({ token }));
  const session = createClientSession({ client, channelName: config.session });
  const errors = [];
  session.on('error', (err) => errors.push(errorJson(err)));
  await within(session.connect(), 10000, `${clientId} session connect`);
  if (history) {
    let guard = 0;
    while (session.view.hasOlder() && guard++ < 100) await within(session.view.loadOlder(100), 10000, 'loadOlder');
  }
  const transport = createChatTransport(session, { api: config.api, ...transportOptions });
  // Record every UIMessageChunk useChat reads, per request (the stream the ChatTransport built).
  const requests = [];
  const sendMessages = transport.sendMessages;
  transport.sendMessages = async (options) => {
    const stream = await sendMessages(options);
    const seen = [];
    requests.push({ trigger: options.trigger, chunks: seen });
    return stream.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          seen.push(chunk);
          controller.enqueue(chunk);
        },
      }),
    );
  };
  const chatErrors = [];
  const chat = new TestChat({
    transport,
    onError: (err) => chatErrors.push(errorJson(err)),
    ...chatOptions,
  });
  const dev = { clientId, client, session, transport, chat, errors, chatErrors, requests, sync: () => {} };
  if (sync) {
    const apply = () => {
      if (transport.streaming) return;
      const tree = session.view.getMessages().map((m) => m.message);
      chat.messages = mergeMessages(tree, chat.messages);
    };
    session.view.on('update', apply);
    transport.onStreamingChange((streaming) => {
      if (!streaming) apply();
    });
    apply();
    dev.sync = apply;
  }
  return dev;
}

export function errorJson(err) {
  if (!err) return null;
  return { code: err.code ?? null, statusCode: err.statusCode ?? null, message: String(err.message ?? err) };
}

/** Text of every text part of a UIMessage, concatenated. */
export const textOf = (message) =>
  message.parts
    .filter((p) => p.type === 'text')
    .map((p) => p.text)
    .join('');

/** The session view, folded: codec-message-id, UIMessage id, role, parts. */
export function viewMessages(dev) {
  return dev.session.view.getMessages().map(({ codecMessageId, message }) => ({
    codecMessageId,
    id: message.id,
    role: message.role,
    parts: message.parts,
    text: textOf(message),
  }));
}

export function runsOf(dev) {
  return dev.session.view.runs().map((r) => ({
    runId: r.runId,
    status: r.status,
    clientId: r.clientId,
    invocationId: r.invocationId,
    error: errorJson(r.error),
    steps: r.steps?.length ?? 0,
  }));
}

/** Everything a test may want to assert about a device, JSON-friendly. */
export function snapshot(dev) {
  // Deep copy: the view hands out the tree's live objects, which later folds mutate.
  return JSON.parse(JSON.stringify(rawSnapshot(dev)));
}

function rawSnapshot(dev) {
  return {
    clientId: dev.clientId,
    view: viewMessages(dev),
    runs: runsOf(dev),
    chat: dev.chat.messages.map((m) => ({ id: m.id, role: m.role, parts: m.parts, text: textOf(m) })),
    chatStatus: dev.chat.status,
    chatError: errorJson(dev.chat.error),
    sessionErrors: [...dev.errors],
    chatErrors: [...dev.chatErrors],
    requests: dev.requests.map((r) => ({ trigger: r.trigger, chunks: r.chunks.map((c) => c.type) })),
  };
}

/** Polls `predicate` every 10 ms; rejects naming `what` after `ms`. */
export async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Waits until the view shows a run for which `predicate(run)` holds; returns it. */
export const untilRun = (dev, predicate, what, ms = 20000) =>
  until(() => dev.session.view.runs().find(predicate), ms, what);

/**
 * Waits until the chat returns to `ready` or `error` (after a request it issued), then re-syncs it
 * from the view — useMessageSync's effect runs again after useChat's last state write.
 */
export async function untilChatIdle(dev, what = 'chat to settle', ms = 20000) {
  await until(() => dev.chat.status === 'ready' || dev.chat.status === 'error', ms, what);
  await sleep(0);
  dev.sync();
}

/** The last assistant message in the view whose text satisfies `predicate` (polls). */
export const untilAssistantText = (dev, predicate, what, ms = 20000) =>
  until(
    () => viewMessages(dev).find((m) => m.role === 'assistant' && predicate(m.text)),
    ms,
    what,
  );

/** POSTs an invocation for a ClientRun (what the ChatTransport does), returns the HTTP status + body. */
export async function invoke(run) {
  const res = await fetch(config.api, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(run.toInvocation().toJSON()),
  });
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  return { status: res.status, body };
}

export const userMessage = (text, id = `u-${crypto.randomUUID().slice(0, 8)}`) => ({
  id,
  role: 'user',
  parts: [{ type: 'text', text }],
});
