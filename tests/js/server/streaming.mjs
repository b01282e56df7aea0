// Token streaming with appendMessage: pipelined appends -> versionSerials, an early subscriber
// sees create + append deltas, a late joiner attaching mid-stream sees one full update then
// deltas, and history({untilAttach: true}) (paged) returns each pre-attach message once, rolled up.
import { allPages, config, connected, main, msg, realtime, step, until, within } from './lib.mjs';

const name = `${config.ns}:stream`;

/** Fires every append before awaiting any ACK, the way AIT's agent pipelines tokens. */
async function pipelined(channel, serial, fragments) {
  const pending = fragments.map((data) => channel.appendMessage({ serial, data }));
  return (await within(Promise.all(pending), 15000, 'pipelined appends')).map((r) => r.versionSerial);
}

main(async () => {
  const out = {};
  step('connect');
  // Each append is examined on its own here: the agent turns Ably's server-side rollup off
  // (rollup.mjs covers it).
  const agent = await connected(realtime({ clientId: 'agent', transportParams: { appendRollupWindow: 0 } }));
  const early = await connected(realtime({ clientId: 'early' }));
  const chP = agent.channels.get(name);
  const chE = early.channels.get(name);
  await within(chP.attach(), 10000, 'agent attach');
  const seenE = [];
  await within(
    chE.subscribe((m) => seenE.push(msg(m))),
    10000,
    'early subscribe',
  );

  step('completed streams before the late joiner');
  const completed = [];
  for (let i = 0; i < 3; i++) {
    const created = await within(chP.publish(`done-${i}`, `A${i}`), 10000, 'create');
    const serial = created.serials[0];
    const versions = await pipelined(chP, serial, ['b', 'c', 'd']);
    completed.push({ name: `done-${i}`, serial, versions, text: `A${i}bcd` });
  }
  const plain = await within(chP.publish('plain', 'just text'), 10000, 'plain publish');

  step('stream in flight');
  const live = (await within(chP.publish('live', 'Hel'), 10000, 'live create')).serials[0];
  const liveVersions1 = await pipelined(chP, live, ['lo']);

  step('late joiner attaches mid-stream');
  const late = await connected(realtime({ clientId: 'late' }));
  const chL = late.channels.get(name);
  const seenL = [];
  await within(
    chL.subscribe((m) => seenL.push(msg(m))),
    10000,
    'late subscribe',
  );

  step('stream continues');
  const liveVersions2 = await pipelined(chP, live, [' wor', 'ld', '!']);
  const after = (await within(chP.publish('after-attach', 'later'), 10000, 'after publish')).serials[0];
  await until(() => seenL.some((m) => m.serial === after), 10000, 'late joiner to see after-attach');
  await until(() => seenE.some((m) => m.serial === after), 10000, 'early subscriber to see after-attach');

  step('history untilAttach');
  const paged = await allPages(await within(chL.history({ untilAttach: true, limit: 2 }), 10000, 'history'));
  const whole = await allPages(await within(chL.history({ untilAttach: true }), 10000, 'history'));
  const plainHistory = await allPages(await within(chL.history({ limit: 100 }), 10000, 'plain history'));

  out.completed = completed;
  out.plain = plain.serials[0];
  out.live = { serial: live, versions: [...liveVersions1, ...liveVersions2], text: 'Hello world!' };
  out.after = after;
  out.seenEarly = seenE;
  out.seenLate = seenL;
  out.untilAttach = { items: paged.items.map(msg), pages: paged.pages };
  out.untilAttachWhole = whole.items.map(msg);
  out.history = plainHistory.items.map(msg);
  return out;
});
