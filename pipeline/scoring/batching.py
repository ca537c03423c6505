"""Truncation policy and length-sorted token-budget packing for LM scoring.

Truncation (:func:`truncate_plan`), applied per request when ``context + target`` exceeds
``max_tokens``:

1. A per-request cap ``max_target`` (used by IFD to score the same tokens twice) cuts the target
   from the right first.
2. The target keeps at most ``max_tokens - min(n_context, max_tokens // 4)`` tokens, cut from the
   right: a long response is scored on its beginning, and at least a quarter of the window (or
   the whole context, if shorter) stays for conditioning.
3. The context is cut from the *middle*: its first ``head_tokens`` tokens (chat-template header,
   system prompt, start of a rating prompt) and as many of its last tokens as fit are kept, so the
   text just before the target (the latest turn, the "##Quality:" cue of a rating prompt) survives.

Every request whose tokens were cut is reported with ``truncated=True`` and its token counts before
and after, so no score silently covers less text than its row.

Packing (:func:`pack_batches`): sequences are sorted by length, longest first (so an out-of-memory
error shows up on the first batch), and cut into consecutive batches whose padded size
``batch_size x longest`` stays within ``token_budget`` tokens and of which at most ``max_padding``
(10%) is padding. Neighbours in sorted order have similar lengths, so large pools pack into full
batches with little padding; small uneven ones into more, tighter batches (:func:`padding_waste`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TruncPlan:
    """Per-request token counts to keep: ``ctx_head`` + ``ctx_tail`` of the context, ``tgt`` of the target."""

    ctx_head: np.ndarray
    ctx_tail: np.ndarray
    tgt: np.ndarray
    truncated: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.ctx_head + self.ctx_tail + self.tgt


def truncate_plan(
    n_context: np.ndarray,
    n_target: np.ndarray,
    max_tokens: int | np.ndarray,
    head_tokens: int = 32,
    max_target: np.ndarray | None = None,
) -> TruncPlan:
    """Vectorised truncation plan for requests with the given token counts (see module docstring).

    ``max_tokens`` is one limit for all requests or one per request.
    """
    max_tokens = np.asarray(max_tokens, dtype=np.int64)
    if (max_tokens < 2).any():
        raise ValueError("max_tokens must be at least 2")
    n_ctx = np.asarray(n_context, dtype=np.int64)
    n_tgt = np.asarray(n_target, dtype=np.int64)
    tgt = n_tgt.copy()
    if max_target is not None:
        cap = np.asarray(max_target, dtype=np.float64)
        capped = ~np.isnan(cap)
        tgt = np.where(capped, np.minimum(tgt, np.nan_to_num(cap, nan=0).astype(np.int64)), tgt)
    reserve = np.minimum(n_ctx, max_tokens // 4)
    tgt = np.minimum(tgt, max_tokens - reserve)
    ctx_keep = np.minimum(n_ctx, max_tokens - tgt)
    head = np.minimum(ctx_keep, head_tokens)
    # a context that fits is kept whole (all of it counted as head, nothing cut from the middle)
    whole = ctx_keep == n_ctx
    head = np.where(whole, n_ctx, head)
    tail = np.where(whole, 0, ctx_keep - head)
    truncated = (tgt < n_tgt) | ~whole
    return TruncPlan(head, tail, tgt, truncated)


def pack_batches(lengths: np.ndarray, token_budget: int, max_batch_size: int,
                 max_padding: float = 0.1) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches, longest first, each within ``token_budget`` padded tokens.

    A batch also ends before the row that would make more than ``max_padding`` of it padding (so a
    small, uneven pool gets several tight batches rather than a few ragged ones). A sequence longer
    than the budget gets a batch of its own.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    srt = lengths[order]
    csum = np.concatenate([[0], np.cumsum(srt)])
    batches: list[np.ndarray] = []
    start, n = 0, len(order)
    while start < n:
        longest = max(int(srt[start]), 1)
        size = int(max(1, min(max_batch_size, token_budget // longest, n - start)))
        # padding fraction of the batch [start, start + k) for every k <= size; it grows with k
        k = np.arange(1, size + 1)
        waste = 1.0 - (csum[start + k] - csum[start]) / (k * longest)
        size = max(1, int(np.searchsorted(waste, max_padding, side="right")))
        batches.append(order[start : start + size])
        start += size
    return batches


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens the batches occupy once padded to their longest member."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def padding_waste(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Fraction of padded batch tokens that are padding."""
    padded = padded_tokens(lengths, batches)
    return 0.0 if padded == 0 else 1.0 - float(np.asarray(lengths).sum()) / padded
