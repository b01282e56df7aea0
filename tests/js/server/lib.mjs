// Shared harness for the ably-js scripts that run against the embedded server.
//
// Contract with tests/node_support.py:
//   * configuration arrives as JSON in the AW_NODE_CONFIG environment variable
//     (host, port, key, protocol "json"|"msgpack", plus script-specific fields);
//   * the script prints exactly one `@@result <json>` line at the end, `{"ok": true, ...}` on
//     success or `{"ok": false, "error": ..., "step": ...}` on failure (exit code 1);
//   * `ctl(request)` prints `@@ctl <json>` and waits for one JSON line on stdin: the Python side
//     answers it (e.g. by calling server.drop_connections()).
// Every script is bounded by a hard timeout that reports the step it was stuck in.
import * as Ably from 'ably';
import { createInterface } from 'node:readline';

export { Ably };

export const config = JSON.parse(process.env.AW_NODE_CONFIG || '{}');
export const binary = config.protocol !== 'json';

let currentStep = 'start';
let finished = false;

/** Names the step in progress; a timeout or exception reports it. */
export function step(name) {
  currentStep = name;
}

function emit(tag, obj, then) {
  process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`, then);
}

/** Prints the result line and exits once it is flushed (a pipe may be written asynchronously). */
function finish(result, code) {
  emit('result', result, () => process.exit(code));
}

function fail(error) {
  if (finished) return;
  finished = true;
  const err = error instanceof Error ? error : new Error(String(error));
  finish({ ok: false, step: currentStep, error: err.message, code: err.code ?? null, stack: err.stack ?? null }, 1);
}

/** Client options pointing ably-js at the local server (verified against util/defaults.ts). */
export function clientOptions(extra = {}) {
  return {
    endpoint: config.host || '127.0.0.1',
    port: config.port,
    tls: false,
    useBinaryProtocol: binary,
    disableConnectivityCheck: true,
    fallbackHosts: [],
    logLevel: 0,
    ...extra,
  };
}

const clients = [];
const TOKEN_OPTIONS = ['token', 'tokenDetails', 'authCallback', 'authUrl'];

/** The configured key, unless `extra` asks for token auth. */
function credentials(extra) {
  return TOKEN_OPTIONS.some((k) => k in extra) ? {} : { key: config.key };
}

export function realtime(extra = {}) {
  const client = new Ably.Realtime(clientOptions({ ...credentials(extra), ...extra }));
  clients.push(client);
  return client;
}

export function rest(extra = {}) {
  return new Ably.Rest(clientOptions({ ...credentials(extra), ...extra }));
}

/** Rejects after `ms` with a message naming `what`. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves once `predicate()` is true, polling every 10 ms. */
export async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function connected(client) {
  await within(client.connection.whenState('connected'), 10000, 'connection to reach connected');
  return client;
}

/** Runs `promise` and returns {code, statusCode, message} of its rejection, or null if it resolved. */
export async function errorOf(promise, ms = 15000, what = 'operation') {
  try {
    await within(promise, ms, what);
    return null;
  } catch (err) {
    return { code: err.code ?? null, statusCode: err.statusCode ?? null, message: String(err.message) };
  }
}

/** The wire-relevant fields of a Message, in a JSON-friendly shape. */
export function msg(m) {
  const data =
    m.data instanceof Uint8Array || Buffer.isBuffer(m.data)
      ? { binary: Buffer.from(m.data).toString('base64') }
      : m.data;
  return {
    id: m.id,
    name: m.name,
    data,
    action: m.action,
    serial: m.serial,
    version: m.version ? { serial: m.version.serial, clientId: m.version.clientId, description: m.version.description, metadata: m.version.metadata } : null,
    extras: m.extras ?? null,
    clientId: m.clientId ?? null,
    connectionId: m.connectionId ?? null,
    timestamp: m.timestamp ?? null,
  };
}

/** Every item of a paginated result, following `next()`; also returns the page sizes. */
export async function allPages(first, maxPages = 50) {
  const items = [];
  const pages = [];
  let page = first;
  for (let i = 0; i < maxPages && page; i++) {
    pages.push(page.items.length);
    items.push(...page.items);
    if (!page.hasNext()) return { items, pages };
    page = await within(page.next(), 10000, 'next page');
  }
  throw new Error(`more than ${maxPages} pages`);
}

let stdinLines;
function nextStdinLine() {
  if (!stdinLines) {
    const queue = [];
    const waiters = [];
    createInterface({ input: process.stdin }).on('line', (line) => {
      const waiter = waiters.shift();
      if (waiter) waiter(line);
      else queue.push(line);
    });
    stdinLines = () => (queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
  }
  return stdinLines();
}

/** Asks the Python host to do something (e.g. drop connections) and returns its JSON answer. */
export async function ctl(request, ms = 15000) {
  emit('ctl', request);
  const line = await within(nextStdinLine(), ms, `host answer to ${JSON.stringify(request)}`);
  return JSON.parse(line);
}

/**
 * Runs `body()` under a hard timeout, prints its return value as the result and exits.
 * Connections opened through realtime() are closed first so the server sees clean CLOSEs.
 */
export function main(body, { timeoutMs = 60000 } = {}) {
  const hard = setTimeout(() => fail(new Error(`script timed out after ${timeoutMs} ms`)), timeoutMs);
  process.on('unhandledRejection', fail);
  process.on('uncaughtException', fail);
  (async () => {
    const result = await body();
    step('closing clients');
    await Promise.all(
      clients.map(async (c) => {
        if (c.connection.state === 'closed' || c.connection.state === 'failed') return;
        c.close();
        await within(c.connection.whenState('closed'), 5000, 'close').catch(() => {});
      }),
    );
    // ably-js reports `closed` before its CLOSE frame (deflated asynchronously by `ws`) is on the
    // wire; give it a moment so the server sees clean closes rather than dropped sockets.
    if (clients.length) await sleep(100);
    clearTimeout(hard);
    finished = true;
    finish({ ok: true, ...result }, 0);
  })().catch(fail);
}
