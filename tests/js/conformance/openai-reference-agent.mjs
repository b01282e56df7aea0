// The reference agent for `openai-responses` differential conformance: the official @ably/ai-transport
// 0.8.0 agent side (createAgentSession with ResponsesCodec per invocation, page history, run.start(),
// one run.pipe() of Responses events per pass, run.end()/run.suspend(), session.end()), with the
// model replaced by the same declarative script the Python worker's ScriptedProvider follows
// (tests/conformance/reference.py). The scripted model speaks Responses stream events the way the
// worker's Responses dialect renders a model call (item ids rs_/msg_/fc_<n> per message, output_index
// per response), so folded state can be compared exactly.
//
// AW_NODE_CONFIG = {host, port, key, protocol, rules}. Prints `@@ready {"url", "pid"}`; serves
// POST /api/chat (invocations) and GET /prompts (every prompt the model received, normalised).
import { createAgentSession } from '@ably/ai-transport';
import { approvedUnexecutedCalls, ResponsesCodec, toResponsesInput } from '@ably/ai-transport/openai';

import { ably, config, gate, handleWith, matches, serveAgent } from './agent-host.mjs';

// --- the tools (same names and behaviour as the Python tests) --------------------------------------

const TOOLS = {
  get_weather: { execute: ({ city }) => ({ city, tempC: 21 }) },
  send_notification: { needsApproval: true, execute: ({ message }) => `notification sent: ${message}` },
  get_client_location: { clientSide: true },
};

// providers/_common.py tool_output_text: strings pass through, anything else compact JSON.
const outputText = (value) => (typeof value === 'string' ? value : JSON.stringify(value));

// --- the scripted model ----------------------------------------------------------------------------

/** Responses items in the reference normal form: [{role, text, calls, results, files}]. */
function normalise(items) {
  const out = [];
  for (const item of items) {
    const entry = { role: '', text: '', calls: [], results: [], files: [] };
    if (item.type === 'message') {
      entry.role = item.role === 'user' ? 'user' : 'assistant';
      entry.text = (item.content ?? []).map((p) => p.text ?? p.refusal ?? '').join('');
    } else if (item.type === 'function_call') {
      entry.role = 'assistant';
      entry.calls.push([item.call_id, item.name, JSON.parse(item.arguments || '{}')]);
    } else if (item.type === 'function_call_output') {
      entry.role = 'tool';
      entry.results.push([item.call_id, item.output, false]);
    } else continue;
    out.push(entry);
  }
  return out;
}

const prompts = [];

/** One model call rendered as Responses events (mirrors runtime/dialects.py _ResponsesMapper). */
function* modelCall(rule, counter) {
  let index = 0;
  let open = null; // {kind, id, index, text}
  const next = (prefix) => ({ id: `${prefix}_${++counter.n}`, index: index++ });
  function* closeOpen() {
    if (!open) return;
    const { kind, id, index: oi, text } = open;
    open = null;
    if (kind === 'message') {
      yield { type: 'response.output_text.done', item_id: id, output_index: oi, content_index: 0, text };
      const content = [{ type: 'output_text', text, annotations: [] }];
      yield { type: 'response.output_item.done', output_index: oi, item: { id, type: 'message', role: 'assistant', status: 'completed', content } };
    } else {
      yield { type: 'response.reasoning_summary_text.done', item_id: id, output_index: oi, summary_index: 0, text };
      const item = { id, type: 'reasoning', summary: [{ type: 'summary_text', text }] };
      yield { type: 'response.output_item.done', output_index: oi, item };
    }
  }
  function* textDelta(kind, delta) {
    if (!open || open.kind !== kind) {
      yield* closeOpen();
      const { id, index: oi } = next(kind === 'message' ? 'msg' : 'rs');
      open = { kind, id, index: oi, text: '' };
      if (kind === 'message') {
        yield { type: 'response.output_item.added', output_index: oi, item: { id, type: 'message', role: 'assistant', status: 'in_progress', content: [] } };
        yield { type: 'response.content_part.added', item_id: id, output_index: oi, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } };
      } else {
        yield { type: 'response.output_item.added', output_index: oi, item: { id, type: 'reasoning', summary: [] } };
        yield { type: 'response.reasoning_summary_part.added', item_id: id, output_index: oi, summary_index: 0, part: { type: 'summary_text', text: '' } };
      }
    }
    open.text += delta;
    if (kind === 'message') {
      yield { type: 'response.output_text.delta', item_id: open.id, output_index: open.index, content_index: 0, delta };
    } else {
      yield { type: 'response.reasoning_summary_text.delta', item_id: open.id, output_index: open.index, summary_index: 0, delta };
    }
  }
  const calls = [];
  for (const ev of rule.then) {
    if (ev.text !== undefined || ev.reasoning !== undefined) {
      const kind = ev.text !== undefined ? 'message' : 'reasoning';
      for (const delta of [].concat(ev.text ?? ev.reasoning)) if (delta) yield* textDelta(kind, delta);
    } else if (ev.tool) {
      yield* closeOpen();
      const args = JSON.stringify(ev.tool.input ?? {});
      const { id, index: oi } = next('fc');
      const base = { id, type: 'function_call', call_id: ev.tool.id, name: ev.tool.name };
      yield { type: 'response.output_item.added', output_index: oi, item: { ...base, status: 'in_progress', arguments: '' } };
      yield { type: 'response.function_call_arguments.delta', item_id: id, output_index: oi, delta: args };
      yield { type: 'response.function_call_arguments.done', item_id: id, output_index: oi, arguments: args, name: ev.tool.name };
      yield { type: 'response.output_item.done', output_index: oi, item: { ...base, status: 'completed', arguments: args } };
      calls.push({ call_id: ev.tool.id, name: ev.tool.name, arguments: args });
    } else if (ev.hang) {
      yield HANG; // the model stalls until the run is cancelled
    } else if (ev.gate) {
      yield { [GATE]: ev.gate }; // the model waits for the test to open the gate
    }
  }
  yield* closeOpen();
  return calls;
}

const HANG = Symbol('hang');
const GATE = Symbol('gate');

/** Resolves when `signal` aborts (the run was cancelled). */
const aborted = (signal) =>
  new Promise((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', resolve, { once: true });
  });

/** Items this pass already produced: the codec's own fold of the events piped so far. */
function localFold() {
  let projection = ResponsesCodec.init();
  return {
    fold: (event) => {
      projection = ResponsesCodec.fold(projection, { direction: 'output', event }, { serial: '', messageId: 'pass' });
    },
    items: () => toResponsesInput(ResponsesCodec.getMessages(projection).map((m) => m.message)),
  };
}

async function* pass(conversation, outcome, signal) {
  const local = localFold();
  const counter = { n: 0 };
  const out = function* (event) {
    local.fold(event);
    yield event;
  };
  const history = toResponsesInput(conversation);
  for (const call of approvedUnexecutedCalls(conversation)) {
    const output = outputText(TOOLS[call.name].execute(JSON.parse(call.arguments || '{}')));
    yield* out({ type: 'function_call_output', item: { type: 'function_call_output', call_id: call.call_id, output } });
  }
  for (let step = 0; step < 8; step++) {
    const norm = normalise([...history, ...local.items()]);
    prompts.push(norm);
    const rule = (config.rules ?? []).find((r) => matches(r, norm, prompts.length));
    if (!rule) throw new Error(`no scripted rule matches call ${prompts.length}`);
    const gen = modelCall(rule, counter);
    let calls;
    for (;;) {
      const { value, done } = gen.next();
      if (done) {
        calls = value;
        break;
      }
      if (value === HANG) {
        await aborted(signal);
        return;
      }
      if (value[GATE] !== undefined) {
        await Promise.race([gate(value[GATE]), aborted(signal)]);
        if (signal.aborted) return;
        continue;
      }
      yield* out(value);
    }
    if (calls.length === 0) return;
    let suspend = false;
    for (const call of calls) {
      const tool = TOOLS[call.name];
      if (tool?.clientSide) {
        suspend = true;
      } else if (tool?.needsApproval) {
        suspend = true;
        yield* out({ type: 'tool-approval-request', call_id: call.call_id, name: call.name, arguments: call.arguments });
      } else {
        const output = outputText(tool.execute(JSON.parse(call.arguments)));
        yield* out({ type: 'function_call_output', item: { type: 'function_call_output', call_id: call.call_id, output } });
      }
    }
    if (suspend) {
      outcome.suspend = true;
      return;
    }
  }
}

// --- the route handler -----------------------------------------------------------------------------

const handle = (invocation) =>
  handleWith(
    invocation,
    (channelName) => createAgentSession({ client: ably, channelName, codec: ResponsesCodec }),
    async (run) => {
      while (run.view.hasOlder()) await run.view.loadOlder();
      await run.start();
      const conversation = run.view.getMessages().map(({ message }) => message);
      const outcome = { suspend: false };
      const result = await run.pipe(pass(conversation, outcome, run.abortSignal));
      if (result.reason === 'cancelled' || run.abortSignal.aborted) await run.end({ reason: 'cancelled' });
      else if (outcome.suspend) await run.suspend();
      else await run.end({ reason: 'complete' });
    },
  );

await serveAgent(handle, prompts);
