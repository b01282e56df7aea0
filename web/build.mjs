// Bundles web/src into agent_worker/web/static (committed, shipped as package data) so that
// `pip install` and `make run` need no Node. Deterministic: same sources + lockfile → same bytes
// (tests/web/test_web_bundle.py rebuilds and compares).
//   node build.mjs            write the bundle
//   node build.mjs --out DIR  write it elsewhere (the staleness test)
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const outFlag = process.argv.indexOf('--out');
const outdir = outFlag > 0 ? resolve(process.argv[outFlag + 1]) : join(here, '..', 'agent_worker', 'web', 'static');

mkdirSync(outdir, { recursive: true });
await build({
  absWorkingDir: here,
  entryPoints: ['src/main.tsx'],
  outfile: join(outdir, 'app.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  minify: true,
  sourcemap: false,
  legalComments: 'eof',
  charset: 'utf8',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});
for (const file of ['index.html', 'app.css', 'sw.js']) copyFileSync(join(here, file), join(outdir, file));
