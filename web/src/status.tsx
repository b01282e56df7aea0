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
