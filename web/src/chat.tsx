// The conversation: Vercel's useChat over AI Transport's ChatTransport (sending, regenerate, edit,
// tool outputs and approvals), kept in sync with the session by useMessageSync; the session's view
// (useView) for run status, branch navigation and the whole history; session.cancel for Stop.
import { useChatTransport, useClientSession, useMessageSync, useView } from '@ably/ai-transport/vercel/react';
import { useChat } from '@ai-sdk/react';
import type * as Ably from 'ably';
import {
  lastAssistantMessageIsCompleteWithApprovalResponses,
  lastAssistantMessageIsCompleteWithToolCalls,
  type UIMessage,
} from 'ai';
import { type FormEvent, useCallback, useEffect, useMemo, useRef, useState } from 'react';

import type { WebConfig } from './config';
import { MessageRow, type RowActions } from './message';
import { Connection, Presence, PushToggle } from './status';
import { locate } from './tools';

type Notice = { kind: 'info' | 'refused' | 'error'; text: string };

interface ChatProps {
  config: WebConfig;
  clientId: string;
  sessionName: string;
}

export function Chat({ config, clientId, sessionName }: ChatProps) {
  const { session, chatTransport } = useChatTransport();
  const [notice, setNotice] = useState<Notice | null>(null);
  useClientSession({ onError: (error) => setNotice({ kind: 'error', text: describe(error) }) });

  const chat = useChat({
    transport: chatTransport,
    // Client tools and approvals suspend the run; the answer goes back as a continuation.
    sendAutomaticallyWhen: (options) =>
      lastAssistantMessageIsCompleteWithToolCalls(options) ||
      lastAssistantMessageIsCompleteWithApprovalResponses(options),
    onToolCall: ({ toolCall }) => {
      if (toolCall.toolName !== 'get_client_location') return;
      void locate().then((output) =>
        chat.addToolOutput({ tool: 'get_client_location', toolCallId: toolCall.toolCallId, output }),
      );
    },
    onError: (error) => setNotice({ kind: 'error', text: error.message }),
  });
  const { messages, setMessages, sendMessage, regenerate, addToolOutput, addToolApprovalResponse, status } = chat;
  useMessageSync({ setMessages });

  const view = useView();
  const history = useWholeHistory(session);
  const authors = useAuthors(session);

  // Run facts come from the view, keyed by the codec-message-id the SDK assigns each message.
  const codecIds = useMemo(() => new Map(view.messages.map((m) => [m.message.id, m.codecMessageId])), [view.messages]);
  const runs = view.runs();
  const activeRuns = runs.filter((run) => run.status === 'active');
  const busy = status === 'submitted' || status === 'streaming';

  // A Stop on someone else's run is the worker's call: watch how it ends and say so.
  const stopsRequested = useRef(new Map<string, string>());
  useEffect(() => {
    for (const [runId, owner] of stopsRequested.current) {
      const run = view.run(runId);
      if (!run || run.status === 'active' || run.status === 'suspended') continue;
      stopsRequested.current.delete(runId);
      setNotice(
        run.status === 'cancelled'
          ? { kind: 'info', text: `${owner}'s run was stopped` }
          : { kind: 'refused', text: `the agent refused to stop ${owner}'s run; it ended ${run.status}` },
      );
    }
  });

  const stop = useCallback(() => {
    const mine = activeRuns.filter((run) => run.clientId === clientId);
    const target = (mine.length ? mine : activeRuns).at(-1);
    if (!target?.runId) {
      // Our own send whose run the agent has not started yet: useChat's stop cancels it by its input.
      if (busy) void chat.stop();
      return;
    }
    const owner = target.clientId || 'anonymous';
    if (owner !== clientId && !config.admins.includes(clientId)) {
      stopsRequested.current.set(target.runId, owner);
      setNotice({
        kind: 'info',
        text:
          config.cancelPolicy === 'owner'
            ? `asked the agent to stop ${owner}'s run; its policy lets only ${owner} or an admin stop it`
            : `asked the agent to stop ${owner}'s run`,
      });
    }
    session.cancel(target.runId).catch((error: Ably.ErrorInfo) => setNotice({ kind: 'error', text: describe(error) }));
  }, [activeRuns, busy, chat, clientId, config, session]);

  // One run-status per run, on the last message the run owns.
  const lastRowOfRun = new Map<string, number>();
  messages.forEach((message, index) => {
    const codecId = codecIds.get(message.id);
    const run = codecId ? view.runOf(codecId) : undefined;
    if (run) lastRowOfRun.set(run.runId, index);
  });

  const actions: RowActions = {
    regenerate: (messageId) => void regenerate({ messageId }),
    edit: (messageId, text) => void sendMessage({ text, messageId }),
    approve: (id, approved) => void addToolApprovalResponse({ id, approved }),
    shareLocation: (toolCallId) =>
      void locate().then((output) => addToolOutput({ tool: 'get_client_location', toolCallId, output })),
  };

  return (
    <div className="chat">
      <header>
        <span className="session" data-testid="session">
          {sessionName}
        </span>
        <span className="me" data-testid="me" data-client-id={clientId}>
          you are <b>{clientId}</b>
        </span>
        <Connection />
        <PushToggle />
      </header>
      <aside>
        <Presence sessionName={sessionName} agentClientId={config.agentClientId} />
      </aside>
      <main data-testid="conversation" data-history={history}>
        {history === 'loading' && <p className="loading">loading the conversation…</p>}
        {messages.map((message: UIMessage, index) => {
          const codecId = codecIds.get(message.id);
          const run = codecId ? view.runOf(codecId) : undefined;
          const author =
            message.role === 'user'
              ? ((codecId && authors.get(codecId)) ?? run?.clientId ?? '')
              : config.agentClientId;
          return (
            <MessageRow
              key={message.id}
              message={message}
              me={clientId}
              author={author}
              run={run}
              showStatus={run !== undefined && lastRowOfRun.get(run.runId) === index}
              branch={codecId ? view.branchSelection(codecId) : undefined}
              actions={actions}
            />
          );
        })}
      </main>
      {notice && (
        <p
          className={`notice ${notice.kind}`}
          data-testid={notice.kind === 'refused' ? 'stop-refused' : 'notice'}
          data-kind={notice.kind}
        >
          {notice.text}
        </p>
      )}
      <Composer
        busy={busy}
        canStop={busy || activeRuns.length > 0}
        onSend={(text) => {
          setNotice(null);
          void sendMessage({ text });
        }}
        onStop={stop}
      />
    </div>
  );
}

function Composer(props: { busy: boolean; canStop: boolean; onSend: (text: string) => void; onStop: () => void }) {
  const [input, setInput] = useState('');
  const submit = (event: FormEvent) => {
    event.preventDefault();
    const text = input.trim();
    if (!text || props.busy) return;
    props.onSend(text);
    setInput('');
  };
  return (
    <form className="composer" onSubmit={submit}>
      <input
        data-testid="prompt"
        placeholder="Type a message"
        value={input}
        onChange={(event) => setInput(event.target.value)}
      />
      <button type="submit" data-testid="send" disabled={props.busy}>
        Send
      </button>
      <button type="button" data-testid="stop" disabled={!props.canStop} onClick={props.onStop}>
        Stop
      </button>
    </form>
  );
}

type Session = ReturnType<typeof useChatTransport>['session'];

/** Page the session's whole history into the view once (a late joiner renders everything first). */
function useWholeHistory(session: Session): 'loading' | 'complete' | 'failed' {
  const [state, setState] = useState<'loading' | 'complete' | 'failed'>('loading');
  useEffect(() => {
    let live = true;
    setState('loading');
    void (async () => {
      try {
        await session.connect();
        while (live && (await session.view.loadOlder(100)).length > 0) {
          // each page is rendered as it arrives; stop when nothing older is revealed
        }
        if (live) setState('complete');
      } catch {
        if (live) setState('failed');
      }
    })();
    return () => {
      live = false;
    };
  }, [session]);
  return state;
}

/**
 * Who wrote each user message: the Ably-verified clientId of the `ai-input` that carried it (the
 * token endpoint signs one clientId per tab), keyed by the message's codec-message-id header.
 */
function useAuthors(session: Session): Map<string, string> {
  const [authors, setAuthors] = useState(() => new Map<string, string>());
  useEffect(
    () =>
      session.tree.on('ably-message', (message) => {
        if (message.name !== 'ai-input' || !message.clientId) return;
        const headers = (message.extras as { ai?: { transport?: Record<string, string> } } | undefined)?.ai
          ?.transport;
        const codecId = headers?.['codec-message-id'];
        const author = message.clientId;
        if (!codecId || headers?.role !== 'user') return;
        setAuthors((prev) => (prev.get(codecId) === author ? prev : new Map(prev).set(codecId, author)));
      }),
    [session],
  );
  return authors;
}

function describe(error: Ably.ErrorInfo | Error): string {
  const code = (error as Ably.ErrorInfo).code;
  return code ? `${error.message} (${code})` : error.message;
}
