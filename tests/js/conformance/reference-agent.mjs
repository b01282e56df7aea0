// The reference agent for differential conformance: the official @ably/ai-transport 0.8.0 agent
// exactly as its README route handler runs it (createAgentSession per invocation, page history,
// run.start(), streamText → toUIMessageStream → run.pipe, vercelRunOutcome → end/suspend,
// session.end()), with the model replaced by the AI SDK's own MockLanguageModelV3 driven by the same
// declarative script the Python worker's ScriptedProvider gets (tests/conformance/reference.py).
//
// AW_NODE_CONFIG = {host, port, key, protocol, rules}. Prints `@@ready {"url", "pid"}`; serves
// POST /api/chat (invocations) and GET /prompts (every prompt the model received, normalised).
import { createAgentSession, vercelRunOutcome } from '@ably/ai-transport/vercel';
import { convertToModelMessages, stepCountIs, streamText } from 'ai';

import { ably, config, handleWith, serveAgent } from './agent-host.mjs';
import { scriptedModel, tools } from './mock-model.mjs';

const prompts = [];
const model = scriptedModel(config.rules, prompts);

// --- the README route handler ----------------------------------------------------------------------

const handle = (invocation) =>
  handleWith(
    invocation,
    (channelName) => createAgentSession({ client: ably, channelName }),
    async (run) => {
      while (run.view.hasOlder()) await run.view.loadOlder();
      await run.start();
      const conversation = run.view.getMessages().map(({ message }) => message);
      const result = streamText({
        model,
        messages: await convertToModelMessages(conversation),
        tools,
        stopWhen: stepCountIs(8),
        abortSignal: run.abortSignal,
      });
      const pipeResult = await run.pipe(result.toUIMessageStream());
      const outcome = await vercelRunOutcome(pipeResult, result.finishReason);
      if (outcome.reason === 'suspend') await run.suspend();
      else await run.end(outcome);
    },
  );

await serveAgent(handle, prompts);
