// Presence enter/update/leave/get, SYNC to a late attacher, LEAVE on close, and a synthesized
// LEAVE when a member's process dies without closing its connection (SIGKILL of a child).
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { config, connected, main, realtime, step, until, within } from './lib.mjs';

const channelName = `${config.ns}:presence`;

function members(list) {
  return list.map((p) => ({ clientId: p.clientId, data: p.data ?? null, action: p.action })).sort((x, y) => (x.clientId < y.clientId ? -1 : 1));
}

if (process.argv[2] === 'child') {
  // The doomed member: enters, reports, then waits to be killed.
  const client = realtime({ clientId: 'ghost' });
  await connected(client);
  const ch = client.channels.get(channelName);
  await within(ch.presence.enter('boo'), 10000, 'ghost enter');
  process.stdout.write(`ENTERED ${client.connection.id}\n`);
  setInterval(() => {}, 1000);
} else {
  main(
    async () => {
      const out = {};
      step('connect');
      const obs = await connected(realtime({ clientId: 'observer' }));
      const p1 = await connected(realtime({ clientId: 'p1' }));
      const p2 = await connected(realtime({ clientId: 'p2' }));
      const chObs = obs.channels.get(channelName);
      const events = [];
      await within(
        chObs.presence.subscribe((p) => events.push({ action: p.action, clientId: p.clientId, data: p.data ?? null, connectionId: p.connectionId })),
        10000,
        'presence subscribe',
      );

      step('enter / update / leave');
      const ch1 = p1.channels.get(channelName);
      const ch2 = p2.channels.get(channelName);
      await within(ch1.presence.enter({ mood: 'happy' }), 10000, 'p1 enter');
      await within(ch2.presence.enter('hi'), 10000, 'p2 enter');
      await within(ch1.presence.update({ mood: 'thoughtful' }), 10000, 'p1 update');
      await until(() => events.length >= 3, 10000, 'three presence events');
      out.membersAfterEnter = members(await within(chObs.presence.get(), 10000, 'get'));
      await within(ch2.presence.leave('bye'), 10000, 'p2 leave');
      await until(() => events.some((e) => e.action === 'leave' && e.clientId === 'p2'), 10000, 'p2 leave event');
      out.membersAfterLeave = members(await within(chObs.presence.get(), 10000, 'get'));

      step('late attacher gets the member set by SYNC');
      const late = await connected(realtime({ clientId: 'late' }));
      const chLate = late.channels.get(channelName);
      await within(chLate.attach(), 10000, 'late attach');
      out.lateMembers = members(await within(chLate.presence.get(), 10000, 'late get'));

      step('abrupt drop of a member');
      const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child'], {
        env: process.env,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const lines = createInterface({ input: child.stdout });
      const ghostConnection = await within(
        new Promise((resolve) => lines.on('line', (l) => l.startsWith('ENTERED ') && resolve(l.slice(8)))),
        15000,
        'ghost to enter',
      );
      await until(() => events.some((e) => e.action === 'enter' && e.clientId === 'ghost'), 10000, 'ghost enter event');
      out.membersWithGhost = members(await within(chObs.presence.get(), 10000, 'get'));
      child.kill('SIGKILL');
      const killedAt = Date.now();
      await until(() => events.some((e) => e.action === 'leave' && e.clientId === 'ghost'), 60000, 'synthesized ghost leave');
      out.ghost = { connectionId: ghostConnection, leaveAfterMs: Date.now() - killedAt };
      out.membersAfterGhost = members(await within(chObs.presence.get(), 10000, 'get'));

      step('leave on close');
      p1.close();
      await within(p1.connection.whenState('closed'), 10000, 'p1 closed');
      await until(() => events.some((e) => e.action === 'leave' && e.clientId === 'p1'), 15000, 'p1 leave on close');
      out.membersAfterClose = members(await within(chObs.presence.get(), 10000, 'get'));
      out.events = events;
      return out;
    },
    { timeoutMs: 100000 },
  );
}
