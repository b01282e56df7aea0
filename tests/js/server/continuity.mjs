// Lost continuity (server.drop_connections(resume=False)): ably-js must surface it (a new
// connection id and an ATTACHED without RESUMED), and history({untilAttach: true}) must fill the
// gap, so live deliveries plus the history read cover every message.
import { allPages, config, connected, ctl, main, realtime, step, until, within } from './lib.mjs';

const channelName = `${config.ns}:continuity`;

main(async () => {
  const out = { log: [] };
  step('connect');
  const agent = await connected(realtime({ clientId: 'agent' }));
  const watcher = await connected(realtime({ clientId: 'watcher' }));
  const chA = agent.channels.get(channelName);
  const chW = watcher.channels.get(channelName);
  await within(chA.attach(), 10000, 'agent attach');
  const live = [];
  await within(chW.subscribe((m) => live.push(m.name)), 10000, 'watcher subscribe');
  let lost = false;
  chW.on(function (c) {
    out.log.push({ event: this.event, resumed: c.resumed, code: c.reason?.code ?? null });
    if ((this.event === 'attached' || this.event === 'update') && !c.resumed) lost = true;
  });
  const idBefore = watcher.connection.id;

  step('publish, drop without continuity, publish during the gap');
  for (let i = 0; i < 5; i++) await within(chA.publish(`m-${i}`, 'x'), 10000, 'publish');
  await until(() => live.length === 5, 10000, 'first five live');
  out.drop = await ctl({ op: 'drop', clientId: 'watcher', resume: false });
  for (let i = 5; i < 10; i++) await within(chA.publish(`m-${i}`, 'x'), 10000, 'publish in gap');

  step('continuity loss surfaces, then history fills the gap');
  await until(() => lost, 20000, 'an ATTACHED without RESUMED');
  for (let i = 10; i < 15; i++) await within(chA.publish(`m-${i}`, 'x'), 10000, 'publish after');
  await until(() => live.includes('m-14'), 10000, 'post-gap messages live');
  const hist = await allPages(await within(chW.history({ untilAttach: true, limit: 4 }), 10000, 'history'));

  out.idBefore = idBefore;
  out.idAfter = watcher.connection.id;
  out.connectionError = watcher.connection.errorReason?.code ?? null;
  out.live = live.slice();
  out.history = hist.items.map((m) => m.name);
  out.pages = hist.pages;
  return JSON.parse(JSON.stringify(out));
});
