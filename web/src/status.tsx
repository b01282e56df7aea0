// Presence (devices and the agent's status) and the connection indicator, from ably-js's React hooks
// on the session channel (ClientSessionProvider already wraps the subtree in its ChannelProvider).
import { useAbly, useConnectionStateListener, usePresence, usePresenceListener } from 'ably/react';
import { useState } from 'react';

interface PresenceData {
  device?: string;
  status?: string;
  runId?: string | null;
}

export function Presence({ sessionName, agentClientId }: { sessionName: string; agentClientId: string }) {
  usePresence<PresenceData>(sessionName, { device: 'web' });
  const { presenceData } = usePresenceListener<PresenceData>(sessionName);
  const members = [...presenceData].sort((a, b) =>
    `${a.clientId}/${a.connectionId}`.localeCompare(`${b.clientId}/${b.connectionId}`),
  );
  return (
    <ul className="presence" data-testid="presence" aria-label="on this session">
      {members.map((member) => {
        const data = member.data ?? {};
        const agent = member.clientId === agentClientId;
        const label = agent ? `agent: ${data.status ?? 'idle'}` : (data.device ?? 'device');
        return (
          <li
            key={`${member.clientId}/${member.connectionId}`}
            className={agent ? 'agent' : 'device'}
            data-testid="presence-member"
            data-client-id={member.clientId}
            data-status={data.status ?? ''}
            data-device={data.device ?? ''}
          >
            {member.clientId} <small>({label})</small>
          </li>
        );
      })}
    </ul>
  );
}

export function Connection() {
  const ably = useAbly();
  const [state, setState] = useState<string>(ably.connection.state);
  useConnectionStateListener((change) => setState(change.current));
  return (
    <span className={`connection ${state}`} data-testid="connection" data-state={state}>
      {state}
    </span>
  );
}

/** "Notify me": registers this browser for push notifications (run finished / waiting for you)
 * through ably-js's push plugin. Where the browser's push service is unreachable (offline machines,
 * headless browsers), activation fails and the reason is shown; nothing else depends on it. */
export function PushToggle() {
  const ably = useAbly();
  const [state, setState] = useState<string>('off');
  const [reason, setReason] = useState('');
  const supported = typeof navigator !== 'undefined' && 'serviceWorker' in navigator && 'PushManager' in window;
  const activate = () => {
    setState('activating');
    ably.push.activate().then(
      () => setState('on'),
      (error: unknown) => {
        setState('failed');
        setReason(error instanceof Error ? error.message : String(error));
      },
    );
  };
  if (!supported) return null;
  return (
    <span className="push" data-testid="push" data-state={state} title={reason}>
      {state === 'on' ? (
        'notifications on'
      ) : (
        <button type="button" data-testid="push-toggle" onClick={activate} disabled={state === 'activating'}>
          Notify me
        </button>
      )}
      {state === 'failed' ? <small data-testid="push-error"> push unavailable: {reason}</small> : null}
    </span>
  );
}
