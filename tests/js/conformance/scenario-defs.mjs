// The scenario bodies (one exported function each); run through scenarios.mjs.
// Each returns {<device>: snapshot(...), ...extra}; `wire` (the channel history as the server stores
// it) lets pytest check wire-level invariants such as "no stream left open".
import {
  lastAssistantMessageIsCompleteWithApprovalResponses,
  lastAssistantMessageIsCompleteWithToolCalls,
} from 'ai';

import { allPages, config, ctl, within } from '../server/lib.mjs';
import {
  codec,
  device,
  invoke,
  snapshot,
  textOf,
  until,
  untilAssistantText,
  untilChatIdle,
  untilRun,
  userMessage,
  viewMessages,
} from './lib.mjs';

/** The channel history (oldest first) as seen through `dev`'s connection. */
export async function wire(dev) {
  const channel = dev.client.channels.get(config.session);
  const { items } = await allPages(await within(channel.history({ limit: 1000 }), 10000, 'history'));
  return items.reverse().map((m) => ({
    name: m.name ?? null,
    action: m.action,
    serial: m.serial,
    clientId: m.clientId ?? null,
    data: typeof m.data === 'string' || m.data == null ? m.data ?? null : JSON.stringify(m.data),
    transport: m.extras?.ai?.transport ?? null,
    codec: m.extras?.ai?.codec ?? null,
  }));
}

async function open(gate) {
  const answer = await ctl({ op: 'open', gate });
  if (!answer.ok) throw new Error(`could not open gate ${gate}`);
}

async function waitEvent(event, limit_s = 20) {
  const answer = await ctl({ op: 'wait', event, limit_s }, (limit_s + 5) * 1000);
  if (!answer.ok) throw new Error(`provider event ${event} did not happen; log: ${JSON.stringify(answer.log)}`);
}

const lastAssistant = (dev) => viewMessages(dev).filter((m) => m.role === 'assistant').at(-1);
const toolPartOf = (message) => message?.parts.find((p) => p.type.startsWith('tool-') || p.type === 'dynamic-tool');

/** Sends config.texts (default one message) through useChat, one after the other. */
async function send({ step }) {
  step('device');
  const a = await device('alice');
  for (const text of config.texts ?? ['Hello there']) {
    step(`sendMessage ${text}`);
    await a.chat.sendMessage({ text, ...(config.files ? { files: config.files } : {}) });
    await untilChatIdle(a);
    await untilRun(a, (r) => r.status !== 'active' && a.session.view.runs().every((x) => x.status !== 'active'), 'runs to end');
  }
  return { a: snapshot(a), wire: await wire(a) };
}

/**
 * The owner cancels mid-stream — via useChat's stop (ChatTransport → ClientRun.cancel(), keyed by
 * input-codec-message-id) or via session.cancel(runId) (the README's Stop button) — then sends a
 * follow-up, whose prompt must not contain the cancelled turn.
 */
async function cancelOwner({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  const sending = a.chat.sendMessage({ text: 'Tell me a long story' });
  step('wait for text mid-stream');
  await untilAssistantText(a, (t) => t === 'Once upon a time', 'partial text in the view');
  const chatTextBeforeStop = textOf(a.chat.messages.at(-1));
  step(`cancel via ${config.via}`);
  if (config.via === 'session') {
    const active = a.session.view.runs().find((r) => r.status === 'active');
    await a.session.cancel(active.runId);
  } else {
    await a.chat.stop();
  }
  await sending;
  if (config.providerEvents !== false) {
    step('provider closed');
    await waitEvent('provider-closed');
  }
  step('run cancelled');
  await untilRun(a, (r) => r.status === 'cancelled', 'run to end cancelled');
  await untilChatIdle(a);
  // After useChat's stop the transport may stay `streaming` (its passthrough pipe can stall on a
  // chunk the aborted reader never pulls): a client-side quirk, recorded, not waited for.
  if (config.via === 'session') await until(() => !a.transport.streaming, 10000, 'transport to stop streaming');
  const streamingAfterCancel = a.transport.streaming;
  const atCancel = snapshot(a);
  step('follow-up');
  await a.chat.sendMessage({ text: 'And now?' });
  await untilChatIdle(a);
  await until(() => a.session.view.runs().every((r) => r.status !== 'active'), 20000, 'follow-up run to end');
  return { atCancel, a: snapshot(a), chatTextBeforeStop, streamingAfterCancel, wire: await wire(a) };
}

/** Another clientId cancels alice's run; the worker (owner policy) refuses, the run completes. */
async function cancelRefused({ step }) {
  step('devices');
  const a = await device('alice');
  const m = await device('mallory', { history: true });
  step('send');
  const sending = a.chat.sendMessage({ text: 'Tell me a long story' });
  step('run visible to mallory');
  const run = await untilRun(m, (r) => r.status === 'active', 'mallory to see the active run');
  await untilAssistantText(m, (t) => t === 'Once upon a time', 'partial text on mallory');
  step('mallory cancels');
  await m.session.cancel(run.runId);
  const decided = await ctl({ op: 'metric', name: 'agent_worker_cancels_total', labels: { decision: 'refused' }, atLeast: 1 });
  step('finish the story');
  await open('finish');
  await sending;
  await untilRun(a, (r) => r.status === 'complete', 'run to complete');
  await untilRun(m, (r) => r.status === 'complete', 'run to complete on mallory');
  return { a: snapshot(a), m: snapshot(m), decided, wire: await wire(a) };
}

/** The provider fails mid-stream: run ends `error`, useChat errors, text so far kept. */
async function providerError({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  await a.chat.sendMessage({ text: 'Explain quantum physics' });
  step('settle');
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status === 'error', 'run to end with error');
  return { a: snapshot(a), wire: await wire(a) };
}

/** bob attaches while alice's reply is streaming and ends with the complete text. */
async function lateJoiner({ step }) {
  step('device alice');
  const a = await device('alice');
  step('send');
  const sending = a.chat.sendMessage({ text: 'Count to six' });
  step('first half');
  await untilAssistantText(a, (t) => t === 'one two three ', 'first half on alice');
  step('device bob (mid-stream)');
  const b = await device('bob', { history: true });
  const bobAtJoin = viewMessages(b);
  step('second half');
  await open('half');
  await sending;
  await untilRun(a, (r) => r.status === 'complete', 'run to complete on alice');
  await untilRun(b, (r) => r.status === 'complete', 'run to complete on bob');
  await untilAssistantText(b, (t) => t.endsWith('six'), 'full text on bob');
  return { a: snapshot(a), b: snapshot(b), bobAtJoin };
}

/** A connection (config.dropClient: the worker's or alice's) drops mid-stream and resumes. */
async function dropMidStream({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  const sending = a.chat.sendMessage({ text: 'Count to six' });
  await untilAssistantText(a, (t) => t === 'one two three ', 'first half');
  step(`drop ${config.dropClient}`);
  const dropped = await ctl({ op: 'drop', clientId: config.dropClient });
  await open('half');
  await sending;
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status !== 'active', 'run to end');
  await untilAssistantText(a, (t) => t.endsWith('six'), 'full text');
  return { a: snapshot(a), dropped, wire: await wire(a) };
}

/** The worker's connection dies after the server applied an append whose ACK it withheld, and
 * cannot be resumed (a new connection id): the append must not arrive twice. */
async function dropUnackedNoResume({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  const sending = a.chat.sendMessage({ text: 'Count to six' });
  await untilAssistantText(a, (t) => t === 'one two three ', 'first half');
  step('withhold acks');
  const held = await ctl({ op: 'withhold_acks', clientId: 'agent-worker' });
  await open('held');
  await untilAssistantText(a, (t) => t === 'one two three four ', 'the unacknowledged append');
  step('drop without resume');
  const dropped = await ctl({ op: 'drop', clientId: 'agent-worker', resume: false });
  await open('half');
  await sending;
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status !== 'active', 'run to end');
  await untilAssistantText(a, (t) => t.endsWith('six'), 'full text');
  return { a: snapshot(a), held, dropped, wire: await wire(a) };
}

/** The server refuses (NACKs) the worker's append of "four " while the stream goes on: the view must
 * read "one two three four five " while the stream is still open (the repair reaches live clients as
 * a prefix extension), then end exact. */
async function nackMidStream({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  const sending = a.chat.sendMessage({ text: 'Count to six' });
  await untilAssistantText(a, (t) => t === 'one two three ', 'first half');
  step('refuse the next append');
  const refused = await ctl({ op: 'refuse_appends', clientId: 'agent-worker' });
  await open('refuse');
  await untilAssistantText(a, (t) => t === 'one two three four five ', 'the refused word, while streaming');
  const whileStreaming = a.session.view.runs().map((r) => r.status);
  await open('half');
  await sending;
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status !== 'active', 'run to end');
  await untilAssistantText(a, (t) => t.endsWith('six'), 'full text');
  return { a: snapshot(a), refused, whileStreaming, wire: await wire(a) };
}

/** useChat regenerate of the assistant reply. */
async function regenerate({ step }) {
  step('device');
  const a = await device('alice');
  step('first answer');
  await a.chat.sendMessage({ text: 'Tell me a joke' });
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status === 'complete', 'first run');
  const before = snapshot(a);
  const target = lastAssistant(a);
  step('regenerate');
  await a.chat.regenerate({ messageId: target.id });
  await untilChatIdle(a);
  await untilAssistantText(a, (t) => t === 'Joke 2', 'regenerated answer');
  await until(() => a.session.view.runs().every((r) => r.status !== 'active'), 20000, 'regenerated run to end');
  const newest = lastAssistant(a);
  const branch = a.session.view.branchSelection(newest.codecMessageId);
  return {
    before,
    a: snapshot(a),
    target: target.codecMessageId,
    siblings: { has: branch.hasSiblings, count: branch.siblings.length, index: branch.index },
  };
}

/** useChat edit of the second user message (sendMessage with messageId). */
async function edit({ step }) {
  step('device');
  const a = await device('alice');
  for (const text of ['first question', 'second question']) {
    step(`send ${text}`);
    await a.chat.sendMessage({ text });
    await untilChatIdle(a);
    await until(() => a.session.view.runs().every((r) => r.status !== 'active'), 20000, 'run to end');
  }
  const before = snapshot(a);
  const second = viewMessages(a).filter((m) => m.role === 'user')[1];
  step('edit');
  await a.chat.sendMessage({ text: 'second question, edited', messageId: second.id });
  await untilChatIdle(a);
  await untilAssistantText(a, (t) => t === 'Answer 3', 'answer to the edit');
  await until(() => a.session.view.runs().every((r) => r.status !== 'active'), 20000, 'edit run to end');
  const edited = viewMessages(a).filter((m) => m.role === 'user')[1];
  const branch = a.session.view.branchSelection(edited.codecMessageId);
  return {
    before,
    a: snapshot(a),
    siblings: { has: branch.hasSiblings, count: branch.siblings.length, index: branch.index },
  };
}

/** Tool approval: the run suspends on approval-requested; the response resumes the same run. */
async function approval({ step }) {
  step('device');
  const a = await device('alice', {
    chatOptions: { sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses },
  });
  step('send');
  await a.chat.sendMessage({ text: 'Notify my phone' });
  await untilChatIdle(a);
  const suspended = await untilRun(a, (r) => r.status === 'suspended', 'run to suspend');
  const requested = toolPartOf(a.chat.messages.at(-1));
  const atSuspend = snapshot(a);
  step('respond');
  await a.chat.addToolApprovalResponse({ id: requested.approval.id, approved: config.approved !== false });
  step('resumed run completes');
  await untilRun(a, (r) => r.runId === suspended.runId && r.status === 'complete', 'resumed run to complete');
  await untilChatIdle(a);
  await until(() => !a.transport.streaming, 10000, 'transport to stop streaming');
  return { a: snapshot(a), atSuspend, suspendedRunId: suspended.runId, wire: await wire(a) };
}

/** Client-side tool: the run suspends; the client's tool output forks a fresh run. */
async function clientTool({ step }) {
  step('device');
  const a = await device('alice', {
    chatOptions: { sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls },
  });
  step('send');
  await a.chat.sendMessage({ text: 'Where am I?' });
  await untilChatIdle(a);
  const suspended = await untilRun(a, (r) => r.status === 'suspended', 'run to suspend');
  const call = toolPartOf(a.chat.messages.at(-1));
  const atSuspend = snapshot(a);
  step('tool output');
  await a.chat.addToolOutput({ tool: 'get_client_location', toolCallId: call.toolCallId, output: { city: 'Lisbon' } });
  step('fork completes');
  const fork = await untilRun(a, (r) => r.runId !== suspended.runId && r.status === 'complete', 'fork run to complete');
  await untilChatIdle(a);
  await until(() => !a.transport.streaming, 10000, 'transport to stop streaming');
  await untilAssistantText(a, (t) => t.includes('Lisbon'), 'answer using the tool output');
  return { a: snapshot(a), atSuspend, suspendedRunId: suspended.runId, forkRunId: fork.runId, wire: await wire(a) };
}

/** Steering: a follow-up published into the active run (ClientRun.steer), answered by a new pass. */
async function steering({ step }) {
  step('device');
  const a = await device('alice', { sync: false });
  step('send + invoke');
  const run = await a.session.view.send(codec.createUserMessage(userMessage('Write a poem')));
  const posted = await invoke(run);
  await within(run.started, 10000, 'run.started');
  await untilAssistantText(a, (t) => t.startsWith('Roses are red'), 'first pass text');
  step('steer');
  const steer = run.steer(codec.createUserMessage(userMessage('Make it about cats')));
  const published = await within(steer.published, 10000, 'steer published');
  await waitEvent('steered');
  await open('steer');
  const outcome = await within(steer.outcome, 20000, 'steer outcome');
  await untilRun(a, (r) => r.runId === run.runId && r.status === 'complete', 'run to complete');
  return {
    a: snapshot(a),
    runId: run.runId,
    posted,
    steerSerial: published.serial ?? null,
    outcome,
    runMessages: run.messages.map((m) => ({ id: m.id, role: m.role, text: textOf(m) })),
    wire: await wire(a),
  };
}

/** Two runs on one session at the same time (ClientSession sends, each with its own POST). */
async function concurrent({ step }) {
  step('device');
  const a = await device('alice', { sync: false });
  step('two sends');
  const r1 = await a.session.view.send(codec.createUserMessage(userMessage('first')));
  const p1 = await invoke(r1);
  const r2 = await a.session.view.send(codec.createUserMessage(userMessage('second')));
  const p2 = await invoke(r2);
  await within(Promise.all([r1.started, r2.started]), 10000, 'both runs started');
  step('both mid-stream');
  await until(
    () => a.session.view.runs().filter((r) => r.status === 'active').length === 2,
    10000,
    'both runs active',
  );
  await waitEvent('first-waiting');
  await waitEvent('second-waiting');
  const bothActive = a.session.view.runs().filter((r) => r.status === 'active').map((r) => r.runId);
  await open('both');
  await until(() => [r1, r2].every((r) => a.session.view.run(r.runId)?.status === 'complete'), 20000, 'both complete');
  return {
    a: snapshot(a),
    bothActive,
    posts: [p1, p2],
    runs: [r1, r2].map((r) => ({
      runId: r.runId,
      status: a.session.view.run(r.runId)?.status ?? null,
      inputCodecMessageId: r.inputCodecMessageId,
      messages: r.messages.map((m) => ({ id: m.id, role: m.role, text: textOf(m) })),
    })),
    wire: await wire(a),
  };
}

/** alice and bob on one session, both sending through useChat; their conversations converge. */
async function twoDevices({ step }) {
  step('devices');
  const a = await device('alice');
  const b = await device('bob', { history: true });
  const turns = [
    [a, 'Q1 from alice'],
    [b, 'Q2 from bob'],
    [a, 'Q3 from alice'],
  ];
  for (const [dev, text] of turns) {
    step(`${dev.clientId}: ${text}`);
    const runsBefore = dev.session.view.runs().length;
    await dev.chat.sendMessage({ text });
    await untilChatIdle(dev);
    for (const d of [a, b]) {
      await until(
        () => d.session.view.runs().length === runsBefore + 1 && d.session.view.runs().every((r) => r.status === 'complete'),
        20000,
        `${d.clientId} to see the run complete`,
      );
    }
    await until(() => !a.transport.streaming && !b.transport.streaming, 10000, 'transports idle');
  }
  step('late third device');
  const c = await device('carol', { history: true });
  return { a: snapshot(a), b: snapshot(b), c: snapshot(c) };
}

export const SCENARIOS = {
  send,
  cancelOwner,
  cancelRefused,
  providerError,
  lateJoiner,
  dropMidStream,
  dropUnackedNoResume,
  nackMidStream,
  regenerate,
  edit,
  approval,
  clientTool,
  steering,
  concurrent,
  twoDevices,
};
