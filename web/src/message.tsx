// One message of the conversation: author, text as it streams, tool calls (with approval buttons),
// its run's status, sibling navigation for edits and regenerations, and the edit/regenerate actions.
import type { BranchHandle, RunInfo } from '@ably/ai-transport/react';
import { getToolOrDynamicToolName, isToolOrDynamicToolUIPart, type UIMessage } from 'ai';
import { type FormEvent, useState } from 'react';

export interface RowActions {
  regenerate: (messageId: string) => void;
  edit: (messageId: string, text: string) => void;
  approve: (approvalId: string, approved: boolean) => void;
  shareLocation: (toolCallId: string) => void;
}

interface RowProps {
  message: UIMessage;
  me: string;
  author: string;
  run: RunInfo | undefined;
  showStatus: boolean;
  branch: BranchHandle<UIMessage> | undefined;
  actions: RowActions;
}

const STATUS_LABEL: Record<string, string> = { active: 'streaming' };

export function MessageRow({ message, me, author, run, showStatus, branch, actions }: RowProps) {
  const [editing, setEditing] = useState<string | null>(null);
  const owner = run?.clientId ?? '';
  const own = (message.role === 'user' ? author : owner) === me;
  const text = message.parts.map((part) => (part.type === 'text' ? part.text : '')).join('');
  const finished = run?.status === 'complete' || run?.status === 'cancelled' || run?.status === 'error';

  const saveEdit = (event: FormEvent) => {
    event.preventDefault();
    if (editing?.trim()) actions.edit(message.id, editing.trim());
    setEditing(null);
  };

  return (
    <article
      className={`message ${message.role} ${own ? 'own' : 'observer'}`}
      data-testid="message"
      data-role={message.role}
      data-client-id={author}
      data-run-owner={owner}
      data-message-id={message.id}
    >
      <header>
        <b className="author">{message.role === 'user' ? author || 'someone' : 'assistant'}</b>
        {message.role === 'assistant' && owner && <small> for {owner === me ? 'you' : owner}</small>}
        {branch?.hasSiblings && (
          <nav className="branch" data-testid="branch" data-index={branch.index} data-count={branch.siblings.length}>
            <button
              type="button"
              data-testid="branch-prev"
              disabled={branch.index === 0}
              onClick={() => branch.select(branch.index - 1)}
            >
              ‹
            </button>
            {branch.index + 1} / {branch.siblings.length}
            <button
              type="button"
              data-testid="branch-next"
              disabled={branch.index >= branch.siblings.length - 1}
              onClick={() => branch.select(branch.index + 1)}
            >
              ›
            </button>
          </nav>
        )}
      </header>
      {editing === null ? (
        <div className="text" data-testid="message-text">
          {text}
        </div>
      ) : (
        <form className="edit" onSubmit={saveEdit}>
          <input data-testid="edit-input" value={editing} onChange={(e) => setEditing(e.target.value)} autoFocus />
          <button type="submit" data-testid="edit-save">
            Save
          </button>
          <button type="button" onClick={() => setEditing(null)}>
            Cancel
          </button>
        </form>
      )}
      {message.parts.filter(isToolOrDynamicToolUIPart).map((part) => {
        const name = getToolOrDynamicToolName(part);
        const waitingForMe = run?.status === 'suspended' && owner === me;
        return (
          <div
            key={part.toolCallId}
            className="tool"
            data-testid="tool"
            data-tool-name={name}
            data-state={part.state}
          >
            <code>{name}</code> <small>{part.state}</small>
            {(part.state === 'input-available' || part.state === 'approval-requested') && (
              <pre>{JSON.stringify(part.input)}</pre>
            )}
            {part.state === 'output-available' && <pre>{JSON.stringify(part.output)}</pre>}
            {part.state === 'approval-requested' && (
              <span className="approval">
                <button type="button" data-testid="approve" onClick={() => actions.approve(part.approval.id, true)}>
                  Approve
                </button>
                <button type="button" data-testid="deny" onClick={() => actions.approve(part.approval.id, false)}>
                  Deny
                </button>
              </span>
            )}
            {part.state === 'input-available' && name === 'get_client_location' && waitingForMe && (
              <button type="button" data-testid="share-location" onClick={() => actions.shareLocation(part.toolCallId)}>
                Share my location
              </button>
            )}
          </div>
        );
      })}
      <footer>
        {showStatus && run && (
          <span
            className={`run-status ${run.status}`}
            data-testid="run-status"
            data-run-id={run.runId}
            data-status={run.status}
            data-owner={owner}
            title={run.status === 'error' ? run.error.message : undefined}
          >
            {STATUS_LABEL[run.status] ?? run.status}
            {run.status === 'error' ? `: ${run.error.message}` : ''}
          </span>
        )}
        {message.role === 'assistant' && finished && (
          <button type="button" data-testid="regenerate" onClick={() => actions.regenerate(message.id)}>
            Regenerate
          </button>
        )}
        {message.role === 'user' && editing === null && (
          <button type="button" data-testid="edit" onClick={() => setEditing(text)}>
            Edit
          </button>
        )}
      </footer>
    </article>
  );
}
