// The official Temporal agent's own activity (the plugin registers the framing ones): one inference
// step that adopts the run `openRun` opened, pages the conversation, streams the scripted model
// through the official server transport under `stepIdFor` (so a retried attempt supersedes the
// failed one on every client), and publishes the run's terminal itself (the README's cheapest style).
import { stepIdFor } from '@ably/ai-transport/temporal';
import { vercelRunOutcome, withAgentSession } from '@ably/ai-transport/vercel';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { convertToModelMessages, stepCountIs, streamText } from 'ai';

import { tools } from '../conformance/mock-model.mjs';

const HEARTBEAT_MS = 1000;

/** `modelFor(attempt)` gives the model for one activity attempt (1-based). */
export const createActivities = ({ createClient, modelFor, emit }) => ({
  async runInferenceStep({ ids, invocation }) {
    const context = Context.current();
    const { attempt, activityId } = context.info;
    const stepId = stepIdFor(ids.invocationId);
    emit('step', { runId: ids.runId, invocationId: ids.invocationId, stepId, activityId, attempt, pid: process.pid });
    const beat = setInterval(() => {
      try {
        context.heartbeat();
      } catch {
        /* the activity's own timeout still governs */
      }
    }, HEARTBEAT_MS);
    const client = createClient();
    try {
      return await withAgentSession({ client, invocation }, async ({ session, invocation: parsed }) => {
        const run = session.adoptRun(parsed, ids, { signal: context.cancellationSignal });
        await run.load();
        while (run.view.hasOlder()) await run.view.loadOlder();
        const conversation = run.view.getMessages().map(({ message }) => message);
        const step = run.createStep({ stepId });
        await step.start();
        const result = streamText({
          model: modelFor(attempt),
          messages: await convertToModelMessages(conversation),
          tools,
          stopWhen: stepCountIs(8),
          abortSignal: run.abortSignal,
        });
        const piped = await step.pipe(result.toUIMessageStream());
        await step.end();
        if (piped.reason === 'error') {
          // Leave the run open: Temporal retries the activity, whose new attempt re-opens this step
          // id and supersedes this one's output (after the last attempt withRun's cleanupRun ends it).
          throw ApplicationFailure.retryable(String(piped.error?.message ?? 'model stream failed'), 'ModelStreamError');
        }
        const outcome = await vercelRunOutcome(piped, result.finishReason);
        if (outcome.reason === 'suspend') await run.suspend();
        else await run.end(outcome);
        emit('ended', { runId: ids.runId, reason: outcome.reason });
        return outcome.reason;
      });
    } finally {
      clearInterval(beat);
      client.close();
    }
  },
});
