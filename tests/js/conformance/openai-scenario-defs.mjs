// Conformance scenarios for `openai-responses` sessions: the official @ably/ai-transport 0.8.0 core
// ClientSession with ResponsesCodec (`@ably/ai-transport/openai`), no UI framework, against the
// Python worker (or the official JS agent, see openai-reference-agent.mjs). Run through
// scenarios.mjs like the Vercel ones; each returns {<device>: snapshot, ...}.
import { createClientSession } from '@ably/ai-transport';
import { ResponsesCodec } from '@ably/ai-transport/openai';

import { allPages, config, connected, ctl, realtime, within } from '../server/lib.mjs';
import { errorJson, invoke, until, untilRun } from './lib.mjs';

const codec = ResponsesCodec;

const userMessage = (text) =>
  codec.createUserMessage({
    role: 'user',
    items: [{ type: 'message', role: 'user', content: [{ type: 'input_text', text }] }],
  });

async function device(clientId, { history = false } = {}) {
  const token = config.tokens?.[clientId];
  if (!token) throw new Error(`no token for ${clientId} in AW_NODE_CONFIG.tokens`);
  const client = await connected(realtime({ token }));
  const session = createClientSession({ client, channelName: config.session, codec });
  const errors = [];
  session.on('error', (err) => errors.push(errorJson(err)));
  await within(session.connect(), 10000, `${clientId} session connect`);
  if (history) {
    let guard = 0;
    while (session.view.hasOlder() && guard++ < 100) await within(session.view.loadOlder(100), 10000, 'loadOlder');
  }
  return { clientId, client, session, errors };
}

/** Text of an OpenAIMessage: user input_text, assistant output_text (refusals in brackets). */
const textOf = (message) =>
  message.items
    .filter((i) => i.type === 'message')
    .flatMap((i) => i.content)
    .map((p) => (p.type === 'refusal' ? `[${p.refusal}]` : (p.text ?? '')))
    .join('');

const viewMessages = (dev) =>
  dev.session.view.getMessages().map(({ codecMessageId, message }) => ({
    codecMessageId,
    role: message.role,
    items: message.items,
    toolCallStates: message.toolCallStates ?? null,
    text: textOf(message),
  }));

const runsOf = (dev) =>
  dev.session.view.runs().map((r) => ({ runId: r.runId, status: r.status, clientId: r.clientId, error: errorJson(r.error) }));

const snapshot = (dev) =>
  JSON.parse(JSON.stringify({ clientId: dev.clientId, view: viewMessages(dev), runs: runsOf(dev), sessionErrors: dev.errors }));

const idle = (dev) => dev.session.view.runs().every((r) => r.status !== 'active');
const lastAssistant = (dev) => viewMessages(dev).filter((m) => m.role === 'assistant').at(-1);
const untilText = (dev, predicate, what, ms = 20000) =>
  until(() => viewMessages(dev).find((m) => m.role === 'assistant' && predicate(m.text)), ms, what);

async function wire(dev) {
  const channel = dev.client.channels.get(config.session);
  const { items } = await allPages(await within(channel.history({ limit: 1000 }), 10000, 'history'));
  return items.reverse().map((m) => ({
    name: m.name ?? null,
    action: m.action,
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

/** view.send + the invocation POST the app makes, then waits for the run to start. */
async function sendAndInvoke(dev, inputs, options) {
  const run = await dev.session.view.send(inputs, options);
  const posted = await invoke(run);
  if (posted.status !== 200) throw new Error(`invocation refused: ${JSON.stringify(posted)}`);
  await within(run.started, 10000, 'run.started');
  return run;
}

async function ask(dev, text) {
  const run = await sendAndInvoke(dev, userMessage(text));
  await untilRun(dev, (r) => r.runId === run.runId && r.status !== 'active', `run for ${text} to end`);
  return run;
}

/** config.texts (default one) sent one after the other. */
async function openaiSend({ step }) {
  step('device');
  const a = await device('alice');
  for (const text of config.texts ?? ['Hello there']) {
    step(`send ${text}`);
    await ask(a, text);
  }
  return { a: snapshot(a), wire: await wire(a) };
}

/** The owner cancels mid-stream (session.cancel(runId) or ClientRun.cancel()), then follows up. */
async function openaiCancelOwner({ step }) {
  step('device');
  const a = await device('alice');
  step('send');
  const run = await sendAndInvoke(a, userMessage('Tell me a long story'));
  await untilText(a, (t) => t === 'Once upon a time', 'partial text in the view');
  step(`cancel via ${config.via}`);
  if (config.via === 'session') await a.session.cancel(run.runId);
  else await run.cancel();
  if (config.providerEvents !== false) await waitEvent('provider-closed');
  await untilRun(a, (r) => r.runId === run.runId && r.status === 'cancelled', 'run to end cancelled');
  const atCancel = snapshot(a);
  step('follow-up');
  await ask(a, 'And now?');
  return { atCancel, a: snapshot(a), wire: await wire(a) };
}

/** Another clientId cancels alice's run; the worker's owner policy refuses it. */
async function openaiCancelRefused({ step }) {
  step('devices');
  const a = await device('alice');
  const m = await device('mallory', { history: true });
  step('send');
  const run = await sendAndInvoke(a, userMessage('Tell me a long story'));
  await untilText(m, (t) => t === 'Once upon a time', 'partial text on mallory');
  step('mallory cancels');
  await m.session.cancel(run.runId);
  const decided = await ctl({ op: 'metric', name: 'agent_worker_cancels_total', labels: { decision: 'refused' }, atLeast: 1 });
  await open('finish');
  await untilRun(a, (r) => r.runId === run.runId && r.status === 'complete', 'run to complete');
  await untilRun(m, (r) => r.runId === run.runId && r.status === 'complete', 'run to complete on mallory');
  return { a: snapshot(a), m: snapshot(m), decided };
}

/** bob joins while alice's reply streams (history + live) and ends with the whole reply. */
async function openaiLateJoiner({ step }) {
  step('device alice');
  const a = await device('alice');
  const run = await sendAndInvoke(a, userMessage('Count to six'));
  await untilText(a, (t) => t === 'one two three ', 'first half on alice');
  step('device bob (mid-stream)');
  const b = await device('bob', { history: true });
  const bobAtJoin = viewMessages(b);
  await open('half');
  await untilRun(a, (r) => r.runId === run.runId && r.status === 'complete', 'run to complete on alice');
  await untilRun(b, (r) => r.runId === run.runId && r.status === 'complete', 'run to complete on bob');
  await untilText(b, (t) => t.endsWith('six'), 'full text on bob');
  return { a: snapshot(a), b: snapshot(b), bobAtJoin };
}

/** Regenerate the reply, then edit the second question. */
async function openaiRegenerateEdit({ step }) {
  step('device');
  const a = await device('alice');
  await ask(a, 'Tell me a joke');
  step('regenerate');
  const target = lastAssistant(a);
  const regen = await a.session.view.regenerate(target.codecMessageId);
  const posted = await invoke(regen);
  if (posted.status !== 200) throw new Error(`regenerate refused: ${JSON.stringify(posted)}`);
  await untilText(a, (t) => t === 'Joke 2', 'regenerated answer');
  await until(() => idle(a), 20000, 'regenerated run to end');
  const afterRegenerate = snapshot(a);
  const regenerated = a.session.view.branchSelection(lastAssistant(a).codecMessageId);
  step('second question');
  await ask(a, 'second question');
  step('edit');
  const second = viewMessages(a).filter((m) => m.role === 'user')[1];
  const edited = await a.session.view.edit(second.codecMessageId, userMessage('second question, edited'));
  const postedEdit = await invoke(edited);
  if (postedEdit.status !== 200) throw new Error(`edit refused: ${JSON.stringify(postedEdit)}`);
  await untilText(a, (t) => t === 'Answer 2', 'answer to the edit');
  await until(() => idle(a), 20000, 'edit run to end');
  const editedUser = viewMessages(a).filter((m) => m.role === 'user')[1];
  const branch = a.session.view.branchSelection(editedUser.codecMessageId);
  return {
    afterRegenerate,
    regenerateSiblings: regenerated.siblings.length,
    a: snapshot(a),
    editSiblings: { count: branch.siblings.length, index: branch.index },
  };
}

/** A gated function call: the run suspends with the call pending; approval resumes the same run. */
async function openaiApproval({ step }) {
  step('device');
  const a = await device('alice');
  const run = await sendAndInvoke(a, userMessage('Notify my phone'));
  const suspended = await untilRun(a, (r) => r.runId === run.runId && r.status === 'suspended', 'run to suspend');
  const holder = viewMessages(a).find((m) => m.toolCallStates);
  const [callId, state] = Object.entries(holder.toolCallStates)[0];
  const atSuspend = snapshot(a);
  step('respond');
  const response = codec.createToolApprovalResponse(holder.codecMessageId, {
    call_id: callId,
    approved: config.approved !== false,
  });
  await sendAndInvoke(a, [response], { runId: suspended.runId });
  await untilRun(a, (r) => r.runId === suspended.runId && r.status === 'complete', 'resumed run to complete');
  return { a: snapshot(a), atSuspend, pending: state, suspendedRunId: suspended.runId, wire: await wire(a) };
}

/** A client-side function call: the run suspends; the client's result resumes it. */
async function openaiClientTool({ step }) {
  step('device');
  const a = await device('alice');
  const run = await sendAndInvoke(a, userMessage('Where am I?'));
  const suspended = await untilRun(a, (r) => r.runId === run.runId && r.status === 'suspended', 'run to suspend');
  const holder = viewMessages(a).find((m) => m.items.some((i) => i.type === 'function_call'));
  const call = holder.items.find((i) => i.type === 'function_call');
  const atSuspend = snapshot(a);
  step('tool result');
  const result = codec.createToolResult(holder.codecMessageId, {
    call_id: call.call_id,
    output: JSON.stringify({ city: 'Lisbon' }),
  });
  await sendAndInvoke(a, [result], { runId: suspended.runId });
  await untilRun(a, (r) => r.runId === suspended.runId && r.status === 'complete', 'resumed run to complete');
  await untilText(a, (t) => t.includes('Lisbon'), 'answer using the tool result');
  return { a: snapshot(a), atSuspend, suspendedRunId: suspended.runId };
}

/** Two runs on one session at the same time. */
async function openaiConcurrent({ step }) {
  step('device');
  const a = await device('alice');
  const r1 = await sendAndInvoke(a, userMessage('first'));
  const r2 = await sendAndInvoke(a, userMessage('second'));
  await waitEvent('first-waiting');
  await waitEvent('second-waiting');
  const bothActive = a.session.view.runs().filter((r) => r.status === 'active').map((r) => r.runId);
  await open('both');
  await until(() => [r1, r2].every((r) => a.session.view.run(r.runId)?.status === 'complete'), 20000, 'both complete');
  return { a: snapshot(a), bothActive, runIds: [r1.runId, r2.runId] };
}

export const OPENAI_SCENARIOS = {
  openaiSend,
  openaiCancelOwner,
  openaiCancelRefused,
  openaiLateJoiner,
  openaiRegenerateEdit,
  openaiApproval,
  openaiClientTool,
  openaiConcurrent,
};
