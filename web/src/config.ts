// What the worker tells the page (GET /api/web/config) and what the URL says about this tab.

export interface WebConfig {
  /** Where the browser's ably-js connects; no endpoint = Ably itself. */
  ably: { endpoint: string | null; port: number | null; tls: boolean };
  /** The invocation endpoint the ChatTransport POSTs to. */
  api: string;
  /** The token endpoint (one verified clientId per tab), or null when the worker serves none. */
  authUrl: string | null;
  defaultSession: string;
  /** The worker's presence identity (its clientId on every session). */
  agentClientId: string;
  /** The worker's cancel policy: who may stop a run besides its owner. */
  cancelPolicy: 'owner' | 'any';
  admins: string[];
}

export async function loadConfig(): Promise<WebConfig> {
  const response = await fetch('api/web/config', { cache: 'no-store' });
  if (!response.ok) throw new Error(`GET /api/web/config answered ${response.status}`);
  return (await response.json()) as WebConfig;
}

export interface TabIdentity {
  clientId: string;
  session: string;
}

export function identityFromUrl(config: WebConfig): TabIdentity {
  const params = new URLSearchParams(window.location.search);
  return {
    clientId: (params.get('clientId') ?? '').trim(),
    session: (params.get('session') ?? '').trim() || config.defaultSession,
  };
}

/** Reload the tab as `clientId` (the identity lives in the URL so a reload keeps it). */
export function becomeClient(clientId: string): void {
  const params = new URLSearchParams(window.location.search);
  params.set('clientId', clientId);
  window.location.search = params.toString();
}
