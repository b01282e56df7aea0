// One conversation whose turns go to different agents — the official JS Temporal agent
// (agent.mjs) and Python workers in temporal mode — through one official client device
// (ClientSession + Vercel ChatTransport + useChat's engine): each turn's invocation POST goes to
// that turn's `api`. Prints what the device folded, the channel history and the POST answers.
//
// AW_NODE_CONFIG = {host, port, protocol, session, tokens: {alice}, turns: [turn]}, a turn being
//   {api, text}           send a user message, wait until no run is active;
//   {api, approve: bool}  answer the pending tool approval (the continuation POSTs to `api`), wait
//                         until the suspended run is terminal;
//   plus optional `before: op` (ctl {op} before the turn, e.g. "swap workers"; an `api` in the
//   answer replaces the turn's) and `midStream: op`
//   (ctl {op, runId} once the turn's reply is streaming, e.g. "kill the streaming worker").
import { lastAssistantMessageIsCompleteWithApprovalResponses } from 'ai';

import { device, snapshot, untilChatIdle, untilRun, viewMessages } from '../conformance/lib.mjs';
import { wire } from '../conformance/scenario-defs.mjs';
import { config, ctl, main, step } from '../server/lib.mjs';

const TURN_MS = 120000; // a retried step waits for Temporal's retry (or a heartbeat timeout)

const settled = (a) => a.session.view.runs().every((r) => r.status !== 'active');

async function act(op, extra = {}) {
  const answer = await ctl({ op, ...extra }, TURN_MS);
  if (!answer?.ok) throw new Error(`the test could not ${op}: ${JSON.stringify(answer)}`);
  return answer;
}

main(
  async () => {
    let api = null;
    const answers = [];
    const routed = async (_url, init) => {
      const res = await fetch(api, init);
      answers.push({ api, status: res.status, body: await res.clone().json().catch(() => null) });
      return res;
    };
    step('device');
    const a = await device('alice', {
      transportOptions: { fetch: routed },
      chatOptions: { sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses },
    });
    for (const [i, turn] of config.turns.entries()) {
      const name = `turn ${i + 1}`;
      api = turn.api;
      if (turn.before) {
        step(`${name}: ${turn.before}`);
        api = (await act(turn.before)).api ?? api; // e.g. the URL of a worker the test just started
      }
      step(`${name}: ${turn.text ?? `approve=${turn.approve}`}`);
      const known = new Set(a.session.view.runs().map((r) => r.runId));
      const replies = () => viewMessages(a).filter((m) => m.role === 'assistant' && m.text.length > 0).length;
      const repliesBefore = replies();
      let suspended = null;
      if (turn.text !== undefined) {
        void a.chat.sendMessage({ text: turn.text });
      } else {
        suspended = a.session.view.runs().find((r) => r.status === 'suspended');
        if (!suspended) throw new Error('no suspended run to answer');
        const part = a.chat.messages
          .at(-1)
          ?.parts.find((p) => p.state === 'approval-requested' && p.approval?.id);
        if (!part) throw new Error('no tool part awaiting approval');
        await a.chat.addToolApprovalResponse({ id: part.approval.id, approved: turn.approve });
      }
      if (turn.midStream) {
        const run = await untilRun(
          a,
          (r) => r.status === 'active' && (suspended ? r.runId === suspended.runId : !known.has(r.runId)),
          `${name} to start`,
          TURN_MS,
        );
        await untilRun(a, () => replies() > repliesBefore, `${name} to stream`, TURN_MS);
        step(`${name}: ${turn.midStream}`);
        await act(turn.midStream, { runId: run.runId });
      }
      step(`${name}: settle`);
      if (suspended) {
        const ended = (r) => r.runId === suspended.runId && !['suspended', 'active'].includes(r.status);
        await untilRun(a, ended, 'the resumed run to end', TURN_MS);
      }
      const fresh = () => a.session.view.runs().some((r) => !known.has(r.runId) || r.runId === suspended?.runId);
      await untilRun(a, () => settled(a) && fresh(), `${name}'s run to end`, TURN_MS);
      await untilChatIdle(a, `${name} to settle`, TURN_MS);
    }
    return { a: snapshot(a), wire: await wire(a), answers };
  },
  { timeoutMs: config.timeoutMs ?? 400000 },
);
