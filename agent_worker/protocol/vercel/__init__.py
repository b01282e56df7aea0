"""Vercel AI SDK UIMessage codec (adapter tag ``vercel-ai-sdk-ui-message``)."""
