// The page's service worker: shows the worker's push notifications (sent through Ably's push API,
// or the embedded server's Web Push) and opens the session they name when tapped. Payload:
// {notification: {title, body}, data: {sessionId, runId, outcome}}.
self.addEventListener('push', (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch {
    message = { notification: { title: event.data ? event.data.text() : 'agent-worker' } };
  }
  const notification = message.notification || {};
  const data = message.data || {};
  event.waitUntil(
    self.registration.showNotification(notification.title || 'agent-worker', {
      body: notification.body || '',
      data,
      tag: data.runId || undefined,
    }),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const session = (event.notification.data || {}).sessionId;
  event.waitUntil(
    self.clients.matchAll({ type: 'window', includeUncontrolled: true }).then((tabs) => {
      const open = tabs.find((tab) => session && new URL(tab.url).searchParams.get('session') === session);
      if (open) return open.focus();
      const url = new URL('/', self.location.origin);
      if (session) url.searchParams.set('session', session);
      return self.clients.openWindow(url.href);
    }),
  );
});
