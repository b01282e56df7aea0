// The official JS Temporal agent: a Temporal worker registering @ably/ai-transport's plugin
// (createAblyTransportPlugin: openRun / endRun / suspendRun / cleanupRun) and the inference activity
// of activities.mjs, with workflows.js bundled by the Temporal SDK (webpack + swc); plus the HTTP
// trigger an app puts in front of it: POST /api/chat with the official invocation body
// ({inputEventId, sessionName}) starts one `chatWorkflow` per POST, whose workflow id is the
// invocation id (and, for a fresh run, the run id).
//
// AW_NODE_CONFIG = {host, port, key, protocol, temporalAddress, namespace?, taskQueue, rules}.
// Prints `@@ready {"url", "pid"}`, then `@@event {...}` per step attempt / run end / failure; serves
// POST /api/chat and GET /prompts (every prompt the model received, normalised). Stops on SIGTERM or
// when stdin closes.
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';

import { Invocation } from '@ably/ai-transport';
import { createAblyTransportPlugin } from '@ably/ai-transport/temporal';
import { createUIMessageCodec } from '@ably/ai-transport/vercel';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import * as Ably from 'ably';

import { scriptedModel } from '../conformance/mock-model.mjs';
import { createActivities } from './activities.mjs';

const config = JSON.parse(process.env.AW_NODE_CONFIG || '{}');
const emit = (tag, obj) => process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`);
const namespace = config.namespace ?? 'default';

Runtime.install({ logger: new DefaultLogger('WARN') });

// A client per activity, as the plugin requires (a session detaching its channel must not break
// another session on a shared client).
const createClient = () =>
  new Ably.Realtime({
    key: config.key,
    endpoint: config.host,
    port: config.port,
    tls: false,
    useBinaryProtocol: config.protocol !== 'json',
    disableConnectivityCheck: true,
    fallbackHosts: [],
    logLevel: 0,
  });

const prompts = [];
let attempt = 1;
const model = scriptedModel(config.rules, prompts, () => ({ attempt }));
const modelFor = (n) => {
  attempt = n;
  return model;
};

const connection = await NativeConnection.connect({ address: config.temporalAddress });
const worker = await Worker.create({
  connection,
  namespace,
  taskQueue: config.taskQueue,
  workflowsPath: fileURLToPath(new URL('./workflows.js', import.meta.url)),
  activities: createActivities({ createClient, modelFor, emit: (event, data) => emit('event', { event, ...data }) }),
  plugins: [createAblyTransportPlugin({ codec: createUIMessageCodec(), createClient, heartbeat: true })],
});
const client = new Client({ connection: await Connection.connect({ address: config.temporalAddress }), namespace });

async function startWorkflow(invocation) {
  const invocationId = randomUUID();
  const handle = await client.workflow.start('chatWorkflow', {
    taskQueue: config.taskQueue,
    workflowId: invocationId,
    args: [{ invocation: invocation.toJSON() }],
  });
  handle.result().then(
    (reason) => emit('event', { event: 'workflow', invocationId, outcome: reason ?? null }),
    (err) => emit('event', { event: 'workflow', invocationId, error: String(err?.cause?.message ?? err?.message ?? err) }),
  );
  return { invocationId };
}

const server = createServer((req, res) => {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (req.method === 'GET' && req.url === '/prompts') {
    reply(200, prompts);
    return;
  }
  let body = '';
  req.on('data', (chunk) => {
    body += chunk;
  });
  req.on('end', async () => {
    try {
      reply(200, await startWorkflow(Invocation.fromJSON(JSON.parse(body))));
    } catch (err) {
      reply(500, { error: String(err?.message ?? err) });
    }
  });
});

const running = worker.run();
server.listen(0, '127.0.0.1', () => {
  emit('ready', { url: `http://127.0.0.1:${server.address().port}/api/chat`, pid: process.pid });
});

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  server.close();
  worker.shutdown();
  await running.catch(() => {});
  await connection.close().catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
await running;
