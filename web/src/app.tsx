// The tab: who am I (a verified clientId from the worker's token endpoint), which session, and the
// official providers — ably-js's AblyProvider and AI Transport's ChatTransportProvider — around it.
import { ChatTransportProvider } from '@ably/ai-transport/vercel/react';
import * as Ably from 'ably';
import Push from 'ably/push';
import { AblyProvider } from 'ably/react';
import { type FormEvent, useEffect, useMemo, useRef, useState } from 'react';

import { Chat } from './chat';
import { becomeClient, identityFromUrl, type WebConfig } from './config';

export function App({ config }: { config: WebConfig }) {
  const { clientId, session } = identityFromUrl(config);
  if (!config.authUrl) {
    return (
      <p className="fatal" data-testid="fatal">
        This worker serves no token endpoint, so the page cannot get an Ably token. Enable{' '}
        <code>[http] dev_token_endpoint</code> (local development) or serve the page from your own app.
      </p>
    );
  }
  if (!clientId) return <NameForm />;
  return <Connected config={config} clientId={clientId} session={session} authUrl={config.authUrl} />;
}

function NameForm() {
  const [name, setName] = useState('');
  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (name.trim()) becomeClient(name.trim());
  };
  return (
    <form className="name-form" onSubmit={submit}>
      <label>
        Your name{' '}
        <input data-testid="client-id" value={name} onChange={(e) => setName(e.target.value)} autoFocus />
      </label>
      <button type="submit" data-testid="join">
        Join
      </button>
    </form>
  );
}

interface ConnectedProps {
  config: WebConfig;
  clientId: string;
  session: string;
  authUrl: string;
}

function Connected({ config, clientId, session, authUrl }: ConnectedProps) {
  const [client, setClient] = useState<Ably.Realtime | null>(null);
  const token = useRef<string | null>(null);

  // Create the client in an effect (as the AIT docs do), one per tab; the token endpoint signs a
  // token for exactly this clientId, so every message this tab publishes is verifiably its own.
  useEffect(() => {
    const { endpoint, port, tls } = config.ably;
    const ably = new Ably.Realtime({
      authCallback: (_params, callback) => {
        fetchToken(authUrl, clientId).then(
          (jwt) => {
            token.current = jwt;
            callback(null, jwt);
          },
          (error: unknown) => callback(String(error), null),
        );
      },
      clientId,
      // ably-js's push plugin: push.activate() registers this browser's Web Push subscription for
      // clientId through the push admin API; sw.js shows what arrives (docs/push.md).
      plugins: { Push },
      pushServiceWorkerUrl: '/sw.js',
      ...(endpoint ? { endpoint } : {}),
      ...(port ? { port, tlsPort: port } : {}),
      tls,
    });
    setClient(ably);
    return () => ably.close();
  }, [config, clientId, authUrl]);

  // The invocation POST carries the tab's Ably token, so a worker that authenticates invocations
  // can check the caller's clientId and capability against the session.
  const chatOptions = useMemo(
    () => ({
      prepareSendMessagesRequest: () => {
        const headers: Record<string, string> = {};
        if (token.current) headers.Authorization = `Bearer ${token.current}`;
        return { headers };
      },
    }),
    [],
  );

  if (!client) return null;
  return (
    <AblyProvider client={client}>
      <ChatTransportProvider channelName={session} api={config.api} chatOptions={chatOptions}>
        <Chat config={config} clientId={clientId} sessionName={session} />
      </ChatTransportProvider>
    </AblyProvider>
  );
}

/** A JWT for `clientId` from the worker's token endpoint (the body is the bare token). */
async function fetchToken(authUrl: string, clientId: string): Promise<string> {
  const url = new URL(authUrl, window.location.href);
  url.searchParams.set('clientId', clientId);
  const response = await fetch(url, { cache: 'no-store' });
  const body = await response.text();
  if (!response.ok) throw new Error(`token endpoint answered ${response.status}: ${body}`);
  return body.trim();
}
