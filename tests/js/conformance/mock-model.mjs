// The AI SDK's own MockLanguageModelV3 driven by the declarative model script of the differential
// tests (tests/conformance/reference.py), plus the tools the scripts call. Shared by the official
// reference agents: reference-agent.mjs (route handler) and ../temporal/ (Temporal worker).
import { jsonSchema, tool } from 'ai';
import { MockLanguageModelV3 } from 'ai/test';

// --- the tools (same names, schemas and behaviour as the Python tests) ---------------------------

export const tools = {
  get_weather: tool({
    description: 'Current weather for a city.',
    inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
    execute: async ({ city }) => ({ city, tempC: 21 }),
  }),
  send_notification: tool({
    description: "Send a notification to the user's other devices. Needs the user's approval first.",
    inputSchema: jsonSchema({ type: 'object', properties: { message: { type: 'string' } }, required: ['message'] }),
    needsApproval: true,
    execute: async ({ message }) => `notification sent: ${message}`,
  }),
  get_client_location: tool({
    description: "Ask the user's device for its approximate location (the client runs this tool).",
    inputSchema: jsonSchema({ type: 'object', properties: {} }),
  }),
};

// --- the scripted model ----------------------------------------------------------------------------

/** A prompt as [{role, text, calls: [[id, name, input]], results: [[id, output|null, isError]]}]. */
export function normalise(prompt) {
  return prompt
    .filter((m) => m.role !== 'system')
    .map((m) => {
      const parts = typeof m.content === 'string' ? [{ type: 'text', text: m.content }] : m.content;
      const out = { role: m.role, text: '', calls: [], results: [], files: [] };
      for (const p of parts) {
        if (p.type === 'text') out.text += p.text;
        else if (p.type === 'tool-call') out.calls.push([p.toolCallId, p.toolName, p.input]);
        else if (p.type === 'file') out.files.push(p.mediaType);
        else if (p.type === 'tool-result') {
          const o = p.output ?? {};
          const isError = o.type === 'error-text' || o.type === 'error-json' || o.type === 'execution-denied';
          out.results.push([p.toolCallId, isError ? null : (o.value ?? null), isError]);
        }
      }
      return out;
    });
}

const usage = {
  inputTokens: { total: 1, noCache: 1, cacheRead: undefined, cacheWrite: undefined },
  outputTokens: { total: 1, text: 1, reasoning: undefined },
};

const HANG = Symbol('hang');

function streamFor(rule, signal) {
  const parts = [{ type: 'stream-start', warnings: [] }];
  let n = 0;
  let failure = null;
  let calledTool = false;
  for (const ev of rule.then) {
    if (ev.text !== undefined || ev.reasoning !== undefined) {
      const kind = ev.text !== undefined ? 'text' : 'reasoning';
      const tokens = [].concat(ev.text ?? ev.reasoning);
      const id = `${kind}-${n++}`;
      parts.push({ type: `${kind}-start`, id });
      for (const delta of tokens) parts.push({ type: `${kind}-delta`, id, delta });
      parts.push({ type: `${kind}-end`, id });
    } else if (ev.tool) {
      calledTool = true;
      const input = JSON.stringify(ev.tool.input ?? {});
      parts.push({ type: 'tool-input-start', id: ev.tool.id, toolName: ev.tool.name });
      parts.push({ type: 'tool-input-delta', id: ev.tool.id, delta: input });
      parts.push({ type: 'tool-input-end', id: ev.tool.id });
      parts.push({ type: 'tool-call', toolCallId: ev.tool.id, toolName: ev.tool.name, input });
    } else if (ev.error) {
      failure = ev.error;
    } else if (ev.hang) {
      parts.push(HANG); // the model stalls until the request is aborted (a cancelled run)
    }
  }
  if (!failure) {
    const unified = calledTool ? 'tool-calls' : 'stop';
    parts.push({ type: 'finish', finishReason: { unified, raw: unified }, usage });
  }
  // Pull-based, so a failure surfaces after every part before it was read (erroring a stream
  // drops whatever is still queued).
  let next = 0;
  return new ReadableStream({
    async pull(controller) {
      if (parts[next] === HANG) {
        await new Promise((resolve) => {
          if (signal?.aborted) resolve();
          else signal?.addEventListener('abort', resolve, { once: true });
        });
        controller.error(signal?.reason ?? new Error('aborted'));
        return;
      }
      if (next < parts.length) controller.enqueue(parts[next++]);
      else if (failure) controller.error(new Error(failure));
      else controller.close();
    },
  });
}

/**
 * A mock model answering each call with the first of `rules` that matches the prompt; `prompts`
 * collects every prompt (normalised). `context()` adds match conditions known only to the caller
 * (e.g. `{attempt}`: the Temporal activity attempt).
 */
export function scriptedModel(rules, prompts, context = () => ({})) {
  return new MockLanguageModelV3({
    doStream: async (options) => {
      const norm = normalise(options.prompt);
      prompts.push(norm);
      const call = prompts.length;
      const rule = (rules ?? []).find((r) => matches(r, norm, call, context()));
      if (!rule) throw new Error(`no scripted rule matches call ${call}`);
      return { stream: streamFor(rule, options.abortSignal) };
    },
  });
}

/** The prompt-matching rule of the declarative model scripts (tests/conformance/reference.py). */
export function matches(rule, norm, call, context = {}) {
  const when = rule.if ?? {};
  const lastUser = norm.findLast((m) => m.role === 'user')?.text ?? '';
  const toolResults = norm.reduce((a, m) => a + m.results.length, 0);
  if (when.lastUser !== undefined && when.lastUser !== lastUser) return false;
  if (when.toolResults !== undefined && when.toolResults !== toolResults) return false;
  if (when.call !== undefined && when.call !== call) return false;
  if (when.attempt !== undefined && when.attempt !== context.attempt) return false;
  if (when.worker !== undefined && when.worker !== context.worker) return false;
  return true;
}
