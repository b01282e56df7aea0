"""The client side of AI Transport 0.8.0 in Python: ``agent-worker chat`` and ``agent-worker token``.

``session`` (ChatSession: history, live fold, sends/cancel/regenerate/edit over ably-python),
``render`` (pure view → text, live printer), ``app`` (the terminal loop), ``tokens`` (JWT minting and
the dev token endpoint handler), ``cli`` (command registration). See docs/chat.md.
"""
