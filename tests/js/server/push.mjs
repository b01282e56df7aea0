// ably-js's push admin API (client.push.admin) against the embedded server: a web device saved for
// alice exactly as the push plugin describes a browser, read back, listed, published to (the Python
// side's Web Push receiver decrypts it), refused without push capability, and removed.
import { config, errorOf, main, rest, step, within } from './lib.mjs';

main(async () => {
  const out = {};
  const admin = rest({ token: config.adminToken });
  const alice = rest({ token: config.aliceToken });
  const nobody = rest({ token: config.nobodyToken });
  const device = {
    id: 'js-device-1',
    platform: 'browser',
    formFactor: 'desktop',
    push: { recipient: config.recipient },
  };

  step('push-subscribe saves its own device (clientId from the token)');
  const saved = await within(alice.push.admin.deviceRegistrations.save(device), 10000, 'save');
  out.saved = { id: saved.id, clientId: saved.clientId, state: saved.push?.state ?? null, transport: saved.push?.recipient?.transportType ?? null };

  step('admin reads and lists it');
  const got = await within(admin.push.admin.deviceRegistrations.get('js-device-1'), 10000, 'get');
  out.got = { id: got.id, clientId: got.clientId, targetUrl: got.push.recipient.targetUrl };
  const page = await within(admin.push.admin.deviceRegistrations.list({ clientId: 'alice' }), 10000, 'list');
  out.listed = page.items.map((d) => d.id);

  step('admin publishes to alice');
  await within(
    admin.push.admin.publish({ clientId: 'alice' }, { notification: { title: 'From ably-js', body: 'hello' }, data: { sessionId: 'js' } }),
    15000,
    'publish',
  );

  step('refusals');
  out.noCapability = await errorOf(nobody.push.admin.deviceRegistrations.save({ ...device, id: 'js-device-2' }));
  out.subscriberPublish = await errorOf(alice.push.admin.publish({ clientId: 'alice' }, { notification: { title: 'x' } }));
  out.fcm = await errorOf(
    admin.push.admin.deviceRegistrations.save({ ...device, id: 'js-device-3', push: { recipient: { transportType: 'fcm', registrationToken: 'abc' } } }),
  );
  out.missing = await errorOf(admin.push.admin.deviceRegistrations.get('no-such-device'));

  step('removeWhere clientId');
  await within(admin.push.admin.deviceRegistrations.removeWhere({ clientId: 'alice' }), 10000, 'removeWhere');
  const after = await within(admin.push.admin.deviceRegistrations.list({ clientId: 'alice' }), 10000, 'list after');
  out.afterRemove = after.items.map((d) => d.id);
  return out;
});
