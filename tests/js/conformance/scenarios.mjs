// Conformance scenarios: `node scenarios.mjs <name>`; see tests/conformance/conformance_support.py.
// Each scenario drives the official client side and returns what its devices folded (snapshot()).
import { config, ctl, main, step } from '../server/lib.mjs';
import { OPENAI_SCENARIOS } from './openai-scenario-defs.mjs';
import { SCENARIOS } from './scenario-defs.mjs';

const ALL = { ...SCENARIOS, ...OPENAI_SCENARIOS };
const name = process.argv[2];
const body = ALL[name];
if (!body) {
  console.error(`unknown scenario ${name}; known: ${Object.keys(ALL).join(', ')}`);
  process.exit(2);
}
main(() => body({ config, ctl, step }), { timeoutMs: config.timeoutMs ?? 60000 });
