// The official Temporal agent's workflow, as @ably/ai-transport's temporal README writes it: one
// workflow per invocation, `withRun` (openRun / cleanupRun from the SDK's plugin) around the
// application's inference activity. Runs in Temporal's workflow sandbox: imports only
// `@temporalio/workflow` and the SDK's `/temporal/workflow` shim.
import { withRun } from '@ably/ai-transport/temporal/workflow';
import { proxyActivities } from '@temporalio/workflow';

// Heartbeats while streaming (activities.mjs), so a step whose worker died is retried on another
// worker after the heartbeat timeout; a failed attempt (the model stream broke) is retried too.
const { runInferenceStep } = proxyActivities({
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '5 seconds',
  retry: { maximumAttempts: 3, initialInterval: '100 milliseconds', backoffCoefficient: 1 },
});

export async function chatWorkflow(input) {
  return withRun(input.invocation, async (run) => runInferenceStep({ ids: run.ids, invocation: input.invocation }));
}
