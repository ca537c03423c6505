"""Truncation policy and token-budget packing (pure NumPy; no model)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scoring.batching import pack_batches, padded_tokens, padding_waste, truncate_plan


def test_fitting_requests_are_untouched():
    p = truncate_plan(np.array([10, 3]), np.array([5, 4]), max_tokens=64)
    assert p.truncated.tolist() == [False, False]
    assert (p.ctx_head + p.ctx_tail).tolist() == [10, 3]
    assert p.tgt.tolist() == [5, 4]


def test_long_context_is_cut_in_the_middle_and_flagged():
    p = truncate_plan(np.array([100]), np.array([10]), max_tokens=50, head_tokens=8)
    assert p.truncated.tolist() == [True]
    assert p.tgt.tolist() == [10]  # the target fits: all of it is scored
    assert p.ctx_head.tolist() == [8] and p.ctx_tail.tolist() == [32]
    assert p.total.tolist() == [50]


def test_long_target_keeps_its_start_and_a_quarter_for_context():
    p = truncate_plan(np.array([100]), np.array([500]), max_tokens=64, head_tokens=4)
    assert p.truncated.tolist() == [True]
    assert p.tgt.tolist() == [48]  # 64 - 64 // 4
    assert (p.ctx_head + p.ctx_tail).tolist() == [16]
    short_ctx = truncate_plan(np.array([5]), np.array([500]), max_tokens=64)
    assert short_ctx.tgt.tolist() == [59] and short_ctx.ctx_head.tolist() == [5]


def test_max_target_caps_the_target_per_request():
    p = truncate_plan(np.array([5, 5]), np.array([20, 20]), max_tokens=64, max_target=np.array([7, np.nan]))
    assert p.tgt.tolist() == [7, 20]
    assert p.truncated.tolist() == [True, False]


def test_per_request_limits():
    p = truncate_plan(np.array([30, 30]), np.array([30, 30]), max_tokens=np.array([100, 40]))
    assert p.total.tolist() == [60, 40]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=200), st.integers(16, 8192), st.integers(1, 64),
       st.sampled_from([0.0, 0.1, 1.0]))
def test_packing_covers_every_row_once_within_budget(lengths, budget, max_batch, max_padding):
    lengths = np.array(lengths)
    batches = pack_batches(lengths, budget, max_batch, max_padding)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        assert len(b) == 1 or len(b) * lengths[b].max() <= budget
        assert len(b) == 1 or padding_waste(lengths, [b]) <= max_padding + 1e-12
    # longest first: batch maxima never increase
    maxima = [lengths[b].max() for b in batches]
    assert maxima == sorted(maxima, reverse=True)
    assert 0.0 <= padding_waste(lengths, batches) < 1.0


def test_sorted_packing_wastes_less_than_input_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1000, 500)
    sorted_batches = pack_batches(lengths, 4096, 64, max_padding=1.0)
    # the same batch sizes in input order, as a naive loader would cut them
    sizes = np.cumsum([len(b) for b in sorted_batches])[:-1]
    naive = np.split(np.arange(len(lengths)), sizes)
    assert padded_tokens(lengths, sorted_batches) < padded_tokens(lengths, naive)
    assert padding_waste(lengths, sorted_batches) < 0.1
    # a small uneven pool: the padding cap trades a few more batches for much less padding
    small = rng.integers(60, 160, 64)
    loose, tight = pack_batches(small, 4096, 64, max_padding=1.0), pack_batches(small, 4096, 64)
    assert padding_waste(small, tight) < 0.1 < padding_waste(small, loose)
