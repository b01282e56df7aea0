// One conversation whose turns go to different agents — the official JS Temporal agent
// (agent.mjs) and the Python worker in temporal mode — through one official client device
// (ClientSession + Vercel ChatTransport + useChat's engine): each turn's invocation POST goes to
// that turn's `api`. Prints what the device folded, the channel history and the POST answers.
//
// AW_NODE_CONFIG = {host, port, protocol, session, tokens: {alice}, turns: [{text, api}]}
import { device, snapshot, untilChatIdle, untilRun } from '../conformance/lib.mjs';
import { wire } from '../conformance/scenario-defs.mjs';
import { config, main, step } from '../server/lib.mjs';

const TURN_MS = 90000; // a retried step waits for Temporal's retry (or a heartbeat timeout)

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
    const a = await device('alice', { transportOptions: { fetch: routed } });
    for (const [i, turn] of config.turns.entries()) {
      step(`turn ${i + 1}: ${turn.text}`);
      api = turn.api;
      await a.chat.sendMessage({ text: turn.text });
      await untilChatIdle(a, `turn ${i + 1} to settle`, TURN_MS);
      await untilRun(a, () => a.session.view.runs().every((r) => r.status !== 'active'), 'runs to end', TURN_MS);
    }
    return { a: snapshot(a), wire: await wire(a), answers };
  },
  { timeoutMs: config.timeoutMs ?? 300000 },
);
