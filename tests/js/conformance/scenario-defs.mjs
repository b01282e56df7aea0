// The scenario bodies (one exported function each); run through scenarios.mjs.
import { device, snapshot, untilChatIdle, untilRun } from './lib.mjs';

/** A plain reply through useChat: send, stream, run complete. */
async function plain({ step }) {
  step('device');
  const a = await device('alice');
  step('sendMessage');
  await a.chat.sendMessage({ text: 'Hello there' });
  step('settle');
  await untilChatIdle(a);
  await untilRun(a, (r) => r.status !== 'active', 'run to end');
  return { a: snapshot(a) };
}

export const SCENARIOS = { plain };
