// Differential oracle for the Python protocol layer: runs an official @ably/ai-transport 0.8.0 codec
// (encoder, decoder, reducer) over a JSON scenario and prints what it produced.
//
// Input: AW_NODE_CONFIG = {"mode": "encode" | "inputs" | "decode", "codec"?: "openai", ...} (see each
// mode below); "codec": "openai" selects ResponsesCodec instead of the Vercel UIMessage codec.
// Output: one line "@@result <json>" ({"ok": true, ...} or {"ok": false, "error": ...}).
import * as Ably from 'ably';
import {
  approvedUnexecutedCalls,
  ResponsesCodec,
  toResponsesInput,
  unansweredCalls,
} from '@ably/ai-transport/openai';
import { createUIMessageCodec } from '@ably/ai-transport/vercel';

const config = JSON.parse(process.env.AW_NODE_CONFIG ?? '{}');
const openai = config.codec === 'openai';
const codec = openai ? ResponsesCodec : createUIMessageCodec();
const clone = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value)));

// A ChannelWriter that records every call. Publishes get serials s0001, s0002, ... in call order;
// the Nth append (0-based, across the run) rejects when N is listed in failAppends.
const recordingWriter = (failAppends = []) => {
  const ops = [];
  let serial = 0;
  let appendIndex = 0;
  const writer = {
    async publish(message) {
      const batch = Array.isArray(message) ? message : [message];
      const serials = batch.map(() => `s${String(++serial).padStart(4, '0')}`);
      ops.push({ op: 'publish', messages: clone(batch), serials });
      return { serials };
    },
    appendMessage(message) {
      const index = appendIndex++;
      ops.push({ op: 'append', message: clone(message) });
      if (failAppends.includes(index)) return Promise.reject(new Ably.ErrorInfo('append failed', 50000, 500));
      return Promise.resolve({ versionSerial: `v${index}` });
    },
    async updateMessage(message) {
      ops.push({ op: 'update', message: clone(message) });
      return { versionSerial: 'u' };
    },
  };
  return { ops, writer };
};

// mode "encode": {defaultHeaders, messageId?, stamps?: {key: value}, chunks: [...], cancelAtEnd?, failAppends?}
// Mirrors run-step-writer.ts: stamps are written onto every outbound message by onAblyMessage.
const encode = async () => {
  const { ops, writer } = recordingWriter(config.failAppends ?? []);
  const stamps = config.stamps ?? {};
  const encoder = codec.createEncoder(writer, {
    extras: { headers: config.defaultHeaders },
    messageId: config.messageId,
    onAblyMessage: (message) => {
      Object.assign(message.extras.ai.transport, stamps);
    },
  });
  const errors = [];
  for (const chunk of config.chunks) {
    try {
      await encoder.publishOutput(chunk);
    } catch (error) {
      errors.push({ type: chunk.type, code: error.code, message: error.message });
    }
  }
  if (config.cancelAtEnd) await encoder.cancelStreams();
  try {
    await encoder.close();
  } catch (error) {
    errors.push({ type: 'close', code: error.code, message: error.message });
  }
  return { ops, errors };
};

// mode "inputs": {items: [{input: <VercelInput>, headers, messageId}]} — client publishInput calls.
const inputs = async () => {
  const { ops, writer } = recordingWriter();
  const encoder = codec.createEncoder(writer, {});
  const errors = [];
  for (const item of config.items) {
    try {
      await encoder.publishInput(item.input, { extras: { headers: item.headers }, messageId: item.messageId });
    } catch (error) {
      errors.push({ kind: item.input.kind, code: error.code, message: error.message });
    }
  }
  await encoder.close();
  return { ops, errors };
};

// mode "decode": {messages: [InboundMessage JSON], fold?: true}
// Decodes every message with ONE decoder; folds all events into ONE projection (meta.messageId =
// the wire codec-message-id), as a single tree node would.
const decode = async () => {
  const decoder = codec.createDecoder();
  let projection = codec.init();
  const decoded = [];
  for (const raw of config.messages) {
    const message = { ...raw, version: raw.version ?? {} };
    const result = decoder.decode(message);
    decoded.push(clone(result));
    const transport = message.extras?.ai?.transport ?? {};
    const meta = { serial: message.serial ?? '', messageId: transport['codec-message-id'] };
    for (const event of result.inputs) projection = codec.fold(projection, { direction: 'input', event }, meta);
    for (const event of result.outputs) projection = codec.fold(projection, { direction: 'output', event }, meta);
  }
  const messages = clone(codec.getMessages(projection));
  if (!openai) return { decoded, messages };
  // The model-input side of the OpenAI codec: toResponsesInput and the correlation readers.
  const bare = messages.map((m) => m.message);
  return {
    decoded,
    messages,
    responsesInput: clone(toResponsesInput(bare)),
    unanswered: clone(unansweredCalls(bare)),
    approved: clone(approvedUnexecutedCalls(bare)),
  };
};

const modes = { encode, inputs, decode };
try {
  const run = modes[config.mode];
  if (!run) throw new Error(`unknown mode ${config.mode}`);
  const result = await run();
  console.log(`@@result ${JSON.stringify({ ok: true, ...result })}`);
} catch (error) {
  console.log(`@@result ${JSON.stringify({ ok: false, error: String(error?.stack ?? error) })}`);
}
