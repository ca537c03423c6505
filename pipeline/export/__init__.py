"""Training-ready export of a run: JSONL for trainers, a Hugging Face dataset, and a dataset card.

``export(run_dir, fmt, out)`` writes the selected subset of a run (``selected/``), or, with
``where``, the rows of ``shards/`` (every row, kept or dropped) that match a Polars SQL predicate
such as ``"keep AND ifd < 0.9"``. Formats:

* ``messages``: JSONL, ``{"messages": [{"role", "content"}, ...], "tools": [...], ...}``, the OpenAI
  chat layout that TRL's ``SFTTrainer`` and most trainers read; a system turn stays a message.
  Assistant turns carry ``tool_calls: [{id, type, function: {name, arguments}}]`` (arguments as
  JSON text, as OpenAI gives them) and ``reasoning_content``; tool messages ``tool_call_id`` and
  ``name``; ``tools`` is the conversation's tool definitions. A field a message does not have is
  left out (plain chat rows look exactly as before).
* ``sharegpt``: JSONL, ``{"conversations": [{"from", "value"}, ...], "tools": "...", ...}`` as
  LLaMA-Factory and axolotl read it; roles become ``human``/``gpt``/``system``/``observation`` (a
  tool result, as in LLaMA-Factory) and ``function_call`` (a call, ``value`` the JSON of
  ``{name, arguments}``, or of a list of them for parallel calls; a call's ``id`` rides along in
  that object); ``tools`` is a JSON string as LLaMA-Factory expects. Reasoning is written inline as
  a leading ``<think>\n...\n</think>\n\n`` block of the ``gpt`` turn, the way ShareGPT reasoning data
  holds it; an observation's ``tool_call_id`` / ``name`` are extra keys of its turn.
* ``alpaca``: JSONL, ``{"instruction", "input": "", "output", "system"}``. Alpaca holds one exchange,
  so only ``[system?] user assistant`` conversations are exported; every other row (more than one
  exchange, a tool turn or tool calls or tool definitions, a message ``name``, turns out of order, an
  empty system prompt that Alpaca readers would drop) is skipped, counted by reason, and listed with its
  ``id``/``source``/``source_row`` in ``<name>.skipped.jsonl`` beside the export: never truncated.
  Reasoning is written inline as a ``<think>`` block of ``output``.
* ``hf``: a ``datasets.save_to_disk`` directory with the ``messages`` layout (every message struct
  has every field, null where absent; ``tools`` is JSON text, since tool schemas differ from row to
  row), readable with ``datasets.load_from_disk``. The Arrow files are written in the same streaming
  pass (see :class:`_ArrowSink`: calling ``save_to_disk`` itself would re-read and rewrite the data).

Every exported record also carries ``id`` (the content hash of its messages), ``source`` and
``source_row``, so a record traces back to its input row, and the input's own fields (the user
columns, :func:`pipeline.schema.user_columns`) under the names and types they came in with (one
renamed ``user.<name>`` at ingest because the tool uses that name keeps the ``user.`` name where
the record has a field of that name too); ``with_scores`` adds every stage column (scores,
``keep``, ``drop_reason``, selection columns). The readers (:mod:`pipeline.io.readers`) read every
format back to the same ``messages``, ``tools`` and therefore the same ``id``; reading an export
back, its trace fields become user columns ``user.id`` / ``user.source`` / ``user.source_row``.

Lossless, with two documented exceptions of the ShareGPT layout: a reasoning trace that begins or
ends with a newline loses it (the ``<think>`` block is parsed as Qwen3's template parses it), and two
consecutive assistant messages, the second of which only calls tools, read back as one.

``out`` is a directory (``<out>/train.jsonl`` or the ``save_to_disk`` files, plus ``README.md``),
or for the JSONL formats a ``*.jsonl`` file with ``README.md`` beside it. ``README.md`` is a
Hugging Face dataset card (:func:`dataset_card`) that traces the data to the run that made it.

One directory holds one export: a second ``*.jsonl`` export into the same directory rewrites its
``README.md``.

The export streams: it reads ``batch_rows`` rows of one shard at a time and appends them to the
output, so memory does not grow with the number of rows. Files appear atomically (temp name, then
rename); a ``README.md`` or a dataset directory that this tool did not write is never overwritten.

``push_to_hub`` (only when asked; never in tests) uploads the export and its card to a Hub dataset
repo, created private if it does not exist, with the credentials ``huggingface_hub`` finds.
"""


from pipeline.export.card import CARD_MARKER, card_provenance, dataset_card
from pipeline.export.core import (
    BATCH_ROWS,
    DATA_NAME,
    NOT_SCORES,
    ExportSpec,
    export,
    run_exports,
)
from pipeline.export.mapping import (
    EXPORT_FORMATS,
    FORMAT_FIELDS,
    JSONL_FORMATS,
    SHAREGPT_ROLES,
    TRACE_COLUMNS,
    ExportError,
    alpaca_skip_reason,
    openai_messages_expr,
    rich_expr,
    rich_record,
    think_text,
)

__all__ = ["export", "run_exports", "ExportSpec", "ExportError", "dataset_card", "card_provenance", "EXPORT_FORMATS",
           "JSONL_FORMATS", "FORMAT_FIELDS", "SHAREGPT_ROLES", "TRACE_COLUMNS", "NOT_SCORES", "CARD_MARKER",
           "DATA_NAME", "BATCH_ROWS", "alpaca_skip_reason", "openai_messages_expr", "rich_expr", "rich_record",
           "think_text"]
