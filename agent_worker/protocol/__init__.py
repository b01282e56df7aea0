"""The pure AIT 0.8.0 protocol layer: no I/O, no asyncio. Used by the agent runtime and the terminal client.

Public API (import from the submodules; everything here is synchronous and deterministic)
========================================================================================

``protocol.wire`` — transport-neutral message shapes
    ``InboundMessage(name, data, extras, action, serial, version_serial, client_id, ...)`` — build one
    per SDK message (live or history; ``data`` already JSON-decoded by the SDK). ``OutboundMessage``,
    and the ops ``PublishOp(message, stream_key=None)``, ``AppendOp(stream_key, message, closing)``,
    ``UpdateOp(stream_key, message)`` the runtime executes.

``protocol.headers`` — names, header keys, builders
    Names ``AI_INPUT AI_OUTPUT AI_CANCEL AI_RUN_START AI_RUN_RESUME AI_RUN_SUSPEND AI_RUN_END
    AI_STEP_START AI_STEP_END``; keys ``H_*`` (``H_RUN_ID = "run-id"`` …), ``KIND``, ``PART_TYPE``.
    ``build_output_headers(codec_message_id, run_id, run_client_id, invocation_id,
    input_codec_message_id, parent=, fork_of=, regenerates=, input_client_id=, step_id=,
    step_client_id=)`` — per-message defaults of every agent output (§3.7).
    ``build_lifecycle_headers(run_id, run_client_id, parent=, fork_of=, regenerates=, invocation_id=,
    input_client_id=, input_codec_message_id=, reason=, error_code=, error_message=)``,
    ``build_step_headers(run_id, step_id, step_start_serial=, invocation_id=, run_client_id=,
    input_client_id=, step_client_id=, reason=)``, ``build_input_headers(codec_message_id, event_id,
    role="user", run_id=, run_client_id=, parent=, fork_of=, regenerates=, supersedes=)``,
    ``build_cancel_headers(event_id, run_id=, input_codec_message_id=)``,
    ``build_transport_headers(...)`` (the JS ``buildTransportHeaders``),
    ``build_extras(transport, codec=None, ephemeral=False)``,
    ``lifecycle_message(name, headers) -> OutboundMessage`` (run/step lifecycle: no data),
    ``cancel_message(headers)``, ``run_end_error(headers) -> RunEndError(code, message, status_code)``,
    ``parse_run_lifecycle(msg) -> RunLifecycle | None``, ``parse_step_lifecycle(msg)``,
    field helpers ``read_str/read_bool/read_json/write_str/write_bool/write_json``, ``js_json``
    (``JSON.stringify``), ``parse_json`` (``JSON.parse``), ``MISSING`` (JS ``undefined``).

``protocol.vercel.encoder`` — Vercel codec encoding (adapter tag ``vercel-ai-sdk-ui-message``)
    ``UIMessageEncoder(default_headers, message_id=None)`` — one per assistant message (pipe/send):
      ``.encode(chunk: Mapping) -> list[WireOp]`` for every ``UIMessageChunk`` type of §8.1 (text /
      reasoning / tool-input streams → ``PublishOp(stream_key=...)`` then ``AppendOp`` deltas, closing
      ``AppendOp(closing=True)`` with ``status: complete``; ``tool-input-available`` with no open stream
      → discrete ``kind: tool-input``; everything else discrete ``stream: "false"``; unsupported types
      → ``CodecError``); ``.cancel_open_streams() -> list[AppendOp]`` (``status: cancelled``);
      ``.recovery_update(stream_key) -> UpdateOp`` (full text, for append-failure recovery);
      ``.set_default_header(key, value|None)`` (inject ``step-start-serial`` and
      ``steer-codec-message-ids`` once known); ``.open_stream_keys``; ``.stream_key_for(stream_id)``.
      Runtime contract: execute ops in order; record ``serial`` of a ``PublishOp`` with ``stream_key``;
      appends may be pipelined; after a ``closing`` append from ``encode`` await all pending appends;
      publish all ``cancel_open_streams()`` appends, then await all pending appends once; for each
      stream with a failed append publish ``recovery_update(key)`` (failure → 104000).
    Client inputs: ``encode_user_message(message, transport_headers) -> list[OutboundMessage]`` (ONE
    batch publish), ``encode_regenerate(headers)``, ``encode_tool_result(tool_call_id, output, headers,
    fork_seed=None)``, ``encode_tool_result_error(tool_call_id, message, headers, fork_seed=None)``,
    ``encode_tool_approval_response(tool_call_id, approved, headers, reason=None)``; cancels via
    ``headers.cancel_message(build_cancel_headers(...))``.

``protocol.vercel.decoder`` — ``UIMessageDecoder(strict=False).decode(msg) -> Decoded(inputs, outputs)``
    Per channel, stateful: create/append/update/delete, first-contact updates (late joiners), the
    defensive append-as-first-contact, ``version.serial`` replay guard, mid-stream-join ``start`` /
    ``start-step`` repair. Chunks/inputs are JSON dicts identical to the JS decoder's.

``protocol.vercel.reducer`` — ``VercelProjection`` (``.messages: list[CodecMessage]``,
    ``.fold_input(event, cmid)``, ``.fold_output(chunk, cmid)``, ``.find(cmid)``); ``CodecMessage(
    codec_message_id, message)`` where ``message`` is a UIMessage dict ``{id, role, parts, metadata?}``;
    ``ToolCall(tool_call_id, tool_name, input)``; ``is_tool_part``, ``tool_name``.

``protocol.codec_core`` — ``EncoderCore`` / ``DecoderCore`` (the codec-agnostic stream halves every
    codec subclasses), ``Projection`` (reducer protocol), ``CodecMessage``, ``Decoded``.

``protocol.openai`` — OpenAI Responses codec (adapter tag ``openai-responses``, the official
    ``ResponsesCodec``): ``encoder.ResponsesEncoder(default_headers).encode(event)`` for Responses
    stream events plus ``function_call_output`` / ``tool-approval-request`` (hosted-tool events and
    unmodelled items → ``CodecError``; framing events → no ops); ``encode_user_message`` (one
    ``input_text`` part per wire), ``encode_tool_result`` / ``_error`` / ``encode_tool_approval_response``
    (snake_case ``call_id``); ``decoder.ResponsesDecoder`` (mid-stream-join: synthesised
    ``output_item.added``); ``reducer.OpenAIProjection`` (``{role, items, toolCallStates?}``),
    ``to_responses_input``, ``unanswered_calls``, ``approved_unexecuted_calls``;
    ``convert.to_model_messages``.

``protocol.codecs`` — ``CODECS`` (adapter tag → ``Codec(new_decoder, new_projection, new_encoder)``),
    ``codec_for(tag)``, ``detect_codec(msg)`` (codec headers → tag or None), ``CodecSelector``.

``protocol.tree`` — ``ConversationTree(decoder=None, *, codec=None)`` (``codec`` pins the adapter
    tag; by default the first classifiable message chooses it; ``.codecs`` is the selector)
    ``.apply(msg) -> ApplyResult`` (idempotent, any order; refolds on late earlier serials; step
    gating); ``ApplyResult(run_lifecycle, step_lifecycle, folded, run_id, codec_message_id,
    input_codec_message_id, serial, step_id, step_start_serial, steer_codec_message_ids, inputs,
    outputs)`` — a steering input is ``run_id is not None and inputs``; ``.on_apply(listener)``;
    ``.find_event(event_id) -> InboundMessage | None`` (first message with that ``event-id``, any
    name); ``.run(run_id) -> RunNode | None``; ``.runs()``; ``.node(key)``;
    ``.node_by_codec_message_id(cmid)``; ``.nodes()``; ``.reply_runs(input_cmid)``;
    ``.is_superseded(run_id)``; ``.delete(key)``; ``.apply_run_lifecycle(RunLifecycle)`` (optimistic
    local run-start, serial None). Client view: ``.visible_nodes(selections=None)``,
    ``.visible_messages(selections=None) -> list[CodecMessage]`` (default sibling = latest serial,
    superseded runs hidden),
    ``.siblings(key)``, ``.group_root(key)``. Lifecycle that arrives before its run (history read newest
    page first) is held and applied when the run appears: ``.run_start_seen(run_id)``,
    ``.pending_lifecycle_count()``, ``ConversationTree.EARLY_LIFECYCLE_LIMIT``. Nodes: ``RunNode(run_id,
    parent, start_parent, fork_of, regenerates, client_id, invocation_id, start_serial, status, error,
    end_serial, steps, .messages)`` (``start_parent`` = the run-start's ``parent``, which the agent's walk
    prefers over an output's),
    ``InputNode(codec_message_id, parent, fork_of, serial, .messages)``.

``protocol.branch`` — the agent's branch walk (§4.3, §7.3)
    ``TriggerInfo.from_message(trigger)`` (``codec_message_id, run_client_id, input_client_id, role,
    parent, fork_of, regenerates, supersedes, run_id, event_id``; ``.continuation``, ``.kind``);
    ``resolve_anchors(tree, trigger) -> Anchors(leaf, run_parent)``; ``missing_ancestor(tree, anchor)
    -> str | None`` (keep paging history while not None); ``select_branch(tree, anchor,
    run_id) -> list[Node]``; ``select_branch_messages(tree, anchor, run_id, regenerates=None,
    unresponded_steers=frozenset()) -> list[CodecMessage]``; ``SteerTracker`` (``add_pending``,
    ``has_pending``, ``drain_pending``, ``consume_recently_processed``, ``is_unresponded``; usable as
    ``unresponded_steers``); ``defer_unresponded_steers``; ``pending_tool_calls(ui_messages)``,
    ``approved_pending_tool_calls(ui_messages)``.

``protocol.view`` — ``ClientView(tree)`` for a terminal client: ``.apply(msg)`` (live; pins on-screen
    edit groups like the JS view), ``.apply_history(page_oldest_first)``, ``.messages() ->
    list[CodecMessage]`` (== JS ``view.getMessages()``), ``.branch(cmid) -> Branch(siblings, index,
    kind, group)``, ``.select(cmid, index)``, ``.expect_edit(new_cmid)``, ``.expect_regenerate(target)``.

``protocol.convert`` — ``to_model_messages(ui_messages, ignore_incomplete_tool_calls=False) ->
    list[ModelMessage]`` (``protocol.model``: System/User/Assistant/Tool messages).
"""
