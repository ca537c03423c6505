"""The scoring protocol: what every LM backend takes and returns, as Arrow records.

A **request** is one (context, target) pair of texts, already rendered with the scoring model's
chat template by the pipeline (:mod:`pipeline.scoring.render`):

============== =========================================================================
``req_id``     int64, echoed back
``context``    the conditioning text (system + user turns + earlier turns + assistant header)
``target``     the text whose tokens are scored (an assistant turn and its end-of-turn marker);
               empty for rating prompts
``entropy``    also return the predictive entropy at every target position
``rating``     candidate strings (e.g. ``"1".."6"``, ``"Yes"``/``"No"``); the response carries the
               log-probability of each candidate's first token at the position right after
               ``context + target`` (the answer position)
``max_target`` cap on scored target tokens (null: none); lets IFD score the same tokens twice
``max_tokens`` cap on context + target tokens for this request (null: the backend's
               ``BackendSpec.max_tokens``; vllm also caps it at the context length it loaded)
============== =========================================================================

A **response** carries per-token log-probabilities of the (possibly truncated) target, optional
entropies and rating log-probabilities (with the token id each candidate mapped to, so that two spellings of one token
are not counted twice), token counts before and after truncation, a ``truncated``
flag and an ``error`` (null when fine; e.g. ``"oom"`` when even a single-row batch ran out of
memory, ``"empty"`` when there is no token to condition on).

Both travel as Arrow tables; :func:`write_frame` / :func:`read_frame` move them over a byte stream
(the worker's stdin/stdout) as length-prefixed frames, and they are plain Parquet files in the
worker's file mode. Importing this module needs only pyarrow (it also runs in a vllm interpreter).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Literal, Protocol

import pyarrow as pa

REQUEST_SCHEMA = pa.schema(
    [
        pa.field("req_id", pa.int64(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("entropy", pa.bool_(), nullable=False),
        pa.field("rating", pa.list_(pa.string())),
        pa.field("max_target", pa.int32()),
        pa.field("max_tokens", pa.int32()),
    ]
)

RESPONSE_SCHEMA = pa.schema(
    [
        pa.field("req_id", pa.int64(), nullable=False),
        pa.field("token_logprobs", pa.list_(pa.float32())),
        pa.field("token_entropy", pa.list_(pa.float32())),
        pa.field("rating_logprobs", pa.list_(pa.float32())),
        pa.field("rating_ids", pa.list_(pa.int32())),
        pa.field("n_context", pa.int32()),
        pa.field("n_target", pa.int32()),
        pa.field("n_target_in", pa.int32()),
        pa.field("truncated", pa.bool_()),
        pa.field("error", pa.string()),
    ]
)


def make_requests(
    context: list[str],
    target: list[str],
    *,
    entropy: bool | list[bool] = False,
    rating: list[str] | list[list[str] | None] | None = None,
    max_target: list[int | None] | None = None,
    max_tokens: int | None = None,
    start_id: int = 0,
) -> pa.Table:
    """Build a request table; ``rating`` is one candidate list for all rows or one per row."""
    n = len(context)
    if len(target) != n:
        raise ValueError(f"{n} contexts but {len(target)} targets")
    ent = [bool(entropy)] * n if isinstance(entropy, bool) else [bool(e) for e in entropy]
    if rating is None:
        rat: list[Any] = [None] * n
    elif rating and all(isinstance(r, str) for r in rating):
        rat = [list(rating)] * n  # type: ignore[arg-type]
    else:
        rat = list(rating)
    mt = list(max_target) if max_target is not None else [None] * n
    return pa.table(
        {
            "req_id": pa.array(range(start_id, start_id + n), pa.int64()),
            "context": pa.array(context, pa.string()),
            "target": pa.array(target, pa.string()),
            "entropy": pa.array(ent, pa.bool_()),
            "rating": pa.array(rat, pa.list_(pa.string())),
            "max_target": pa.array(mt, pa.int32()),
            "max_tokens": pa.array([max_tokens] * n, pa.int32()),
        },
        schema=REQUEST_SCHEMA,
    )


def normalize_requests(requests: pa.Table) -> pa.Table:
    """``requests`` in REQUEST_SCHEMA order and types; optional columns it lacks become null."""
    if requests.schema == REQUEST_SCHEMA:
        return requests
    n = requests.num_rows
    cols = {}
    for f in REQUEST_SCHEMA:
        if f.name in requests.column_names:
            cols[f.name] = requests[f.name].cast(f.type)
        elif f.name == "entropy":
            cols[f.name] = pa.array([False] * n, pa.bool_())
        elif f.nullable:
            cols[f.name] = pa.nulls(n, f.type)
        else:
            raise ValueError(f"request table lacks required column {f.name!r}")
    return pa.table(cols, schema=REQUEST_SCHEMA)


def response_table(rows: dict[str, list[Any]]) -> pa.Table:
    """A response table from column lists (missing optional columns become null)."""
    n = len(rows["req_id"])
    cols = {f.name: pa.array(rows.get(f.name, [None] * n), f.type) for f in RESPONSE_SCHEMA}
    return pa.table(cols, schema=RESPONSE_SCHEMA)


def request_limits(requests: pa.Table, default: int, cap: bool = False) -> Any:
    """Per-request ``max_tokens`` as a NumPy array: null -> ``default``; with ``cap``, never above it."""
    import numpy as np

    if "max_tokens" not in requests.column_names:
        return np.full(requests.num_rows, default, dtype=np.int64)
    v = np.nan_to_num(requests["max_tokens"].to_numpy(zero_copy_only=False).astype(np.float64), nan=default)
    return (np.minimum(v, default) if cap else v).astype(np.int64)


# ---------------------------------------------------------------- backend description


@dataclass
class BackendSpec:
    """Everything a backend needs to load and batch; JSON-able so it crosses the process boundary.

    ``token_budget`` is the number of *padded* tokens per forward batch (batch size x longest
    sequence); ``None`` picks 4096 on CPU and 32768 on CUDA. ``max_tokens`` is the default limit on
    context + target per request (requests normally carry their own; vllm loads the model with this
    context length and caps requests at it; see :func:`pipeline.scoring.batching.truncate_plan` for the policy).
    """

    backend: Literal["transformers", "vllm"] = "transformers"
    model: str = "smollm2"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    max_tokens: int = 8192
    head_tokens: int = 32
    token_budget: int | None = None
    max_batch_size: int = 64
    max_padding: float = 0.1  # end a batch before it would be more than this fraction padding
    threads: int | None = None  # CPU intra-op threads (None: torch's default)
    # vllm only
    gpu_memory_utilization: float = 0.85
    logprobs_topk: int = 20
    tensor_parallel_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BackendSpec:
        return cls(**json.loads(text))

    def key(self) -> str:
        """Identity for sharing one loaded backend between stages.

        ``max_tokens`` is left out: stages send their own limit with every request, so stages with
        different limits share one loaded model (with vllm, the first stage's limit is the loaded
        context length; give stages sharing a vllm worker the same ``max_tokens``).
        """
        d = asdict(self)
        d.pop("max_tokens")
        return json.dumps(d, sort_keys=True)


class Backend(Protocol):
    """What the pipeline needs from a scoring backend (in-process or a worker client)."""

    def info(self) -> dict[str, Any]:
        """model_id, chat_template, bos_token, eos_token, backend, device, dtype."""
        ...

    def score(self, requests: pa.Table) -> pa.Table:
        """Responses for ``requests`` (REQUEST_SCHEMA), one per request, in request order."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters: requests, batches, real and padded tokens, forward seconds, OOM splits."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- framing over a byte stream

#: frame kinds: a JSON control message or an Arrow IPC stream holding one table
JSON_FRAME = b"J"
ARROW_FRAME = b"A"
_HEADER = struct.Struct("<cQ")


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def write_frame(stream: BinaryIO, payload: pa.Table | dict[str, Any]) -> None:
    """Write one frame: 1-byte kind, 8-byte little-endian length, payload."""
    if isinstance(payload, pa.Table):
        kind, data = ARROW_FRAME, table_to_bytes(payload)
    else:
        kind, data = JSON_FRAME, json.dumps(payload).encode()
    stream.write(_HEADER.pack(kind, len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        b = stream.read(n - got)
        if not b:
            raise EOFError(f"stream closed after {got} of {n} bytes")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> pa.Table | dict[str, Any] | None:
    """Read one frame; ``None`` at a clean end of stream."""
    head = stream.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        head += _read_exact(stream, _HEADER.size - len(head))
    kind, n = _HEADER.unpack(head)
    data = _read_exact(stream, n)
    if kind == ARROW_FRAME:
        return table_from_bytes(data)
    if kind == JSON_FRAME:
        return json.loads(data)
    raise ValueError(f"unknown frame kind {kind!r}")
