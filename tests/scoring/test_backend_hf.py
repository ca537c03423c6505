"""The transformers backend with the real SmolLM2-135M on real rows.

No GPU is lent to this project's CI, so the CUDA path (and a CUDA-vs-CPU comparison) is not
exercised here; the out-of-memory split is tested by raising torch's own OutOfMemoryError from the
forward of oversized batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.scoring.protocol import make_requests


@pytest.fixture(scope="module")
def requests_(smol, renderer, pool, max_tokens):
    pairs = [p for msgs in pool["messages"].to_list() for p in renderer.turn_pairs(msgs)]
    return make_requests([c for _, c, _ in pairs], [y for _, _, y in pairs], entropy=True,
                         rating=["1", "2", "3", "Yes", "No"], max_tokens=max_tokens)


@pytest.fixture(scope="module")
def batched(smol, requests_):
    return smol.score(requests_)


def _ppl(lp) -> float:
    return math.exp(-float(np.mean(lp)))


def test_rendering_matches_the_tokenizer_chat_template(smol, renderer, chat_rows):
    msgs = chat_rows["messages"].to_list()[0]
    assert renderer.render(msgs) == smol.tokenizer.apply_chat_template(msgs, tokenize=False)
    turns = renderer.turn_pairs(msgs)
    assert [t for t, _, _ in turns] == [0, 1]
    _, ctx, tgt = turns[1]
    assert ctx == smol.tokenizer.apply_chat_template(msgs[:3], tokenize=False, add_generation_prompt=True)
    assert tgt == msgs[3]["content"] + "<|im_end|>"


def test_batched_and_unbatched_perplexities_agree(smol, requests_, batched):
    assert batched.num_rows == requests_.num_rows >= 6
    assert batched["error"].null_count == batched.num_rows
    for i in range(requests_.num_rows):
        one = smol.score(requests_.slice(i, 1))
        a, b = batched["token_logprobs"][i].as_py(), one["token_logprobs"][0].as_py()
        assert len(a) == len(b) > 0
        assert _ppl(a) == pytest.approx(_ppl(b), rel=1e-3)
        ra, rb = batched["rating_logprobs"][i].as_py(), one["rating_logprobs"][0].as_py()
        np.testing.assert_allclose(ra, rb, rtol=1e-3)


def test_values_are_log_probabilities_and_entropies(smol, batched):
    vocab = smol.model.config.vocab_size
    for i in range(batched.num_rows):
        lp = np.array(batched["token_logprobs"][i].as_py())
        ent = np.array(batched["token_entropy"][i].as_py())
        rat = np.array(batched["rating_logprobs"][i].as_py())
        assert np.isfinite(lp).all() and (lp <= 0).all()
        assert len(ent) == len(lp) and (ent >= -1e-4).all() and (ent <= math.log(vocab) + 1e-3).all()
        assert np.isfinite(rat).all() and (rat <= 0).all() and np.exp(rat).sum() <= 1 + 1e-5
    assert batched["rating_ids"][0].as_py() == smol.candidate_ids(["1", "2", "3", "Yes", "No"])


def test_target_logprobs_match_a_plain_forward(smol, requests_, batched):
    """The decoder + head-at-target-positions path equals log_softmax(model(ids).logits)."""
    import torch

    prep = smol.prepare(requests_.slice(0, 1))
    ids = torch.tensor([prep["seqs"][0]])
    c = int(prep["ctx_len"][0])
    with torch.inference_mode():
        logp = torch.log_softmax(smol.model(input_ids=ids).logits[0].float(), -1)
    ref = logp[c - 1 : ids.shape[1] - 1].gather(1, ids[0, c:, None])[:, 0].numpy()
    np.testing.assert_allclose(batched["token_logprobs"][0].as_py(), ref, atol=1e-4)


def test_truncation_is_recorded(smol, renderer, gsm_rows, max_tokens):
    _, ctx, tgt = renderer.turn_pairs(gsm_rows["messages"].to_list()[0])[0]
    full = smol.score(make_requests([ctx], [tgt], max_tokens=max_tokens))
    cut = smol.score(make_requests([ctx], [tgt], max_tokens=48))
    assert not full["truncated"][0].as_py()
    assert cut["truncated"][0].as_py()
    n_in = cut["n_target_in"][0].as_py()
    assert n_in == full["n_target"][0].as_py() > cut["n_target"][0].as_py()
    assert cut["n_context"][0].as_py() + cut["n_target"][0].as_py() == 48
    # the scored tokens are the start of the target, so their count matches the kept length
    assert len(cut["token_logprobs"][0].as_py()) == cut["n_target"][0].as_py()


def test_oom_splits_the_batch_and_retries(smol, requests_, batched):
    import torch

    calls = []
    real_forward = smol._forward

    def tight_memory(idx, prep):
        calls.append(len(idx))
        if len(idx) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: batch > 2 rows)")
        return real_forward(idx, prep)

    before = smol.stats()["oom_splits"]
    smol.forward = tight_memory
    try:
        again = smol.score(requests_)
    finally:
        smol.forward = real_forward
    assert max(calls) > 2 and smol.stats()["oom_splits"] > before
    assert again["error"].null_count == again.num_rows
    for i in range(requests_.num_rows):
        np.testing.assert_allclose(again["token_logprobs"][i].as_py(), batched["token_logprobs"][i].as_py(), rtol=1e-4)


def test_a_single_row_that_never_fits_gets_an_error_not_a_crash(smol, requests_):
    import torch

    real_forward = smol._forward

    def never(idx, prep):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    smol.forward = never
    try:
        out = smol.score(requests_.slice(0, 2))
    finally:
        smol.forward = real_forward
    assert out["error"].to_pylist() == ["oom", "oom"]
    assert out["token_logprobs"].null_count == 2


def test_other_errors_are_not_swallowed(smol, requests_):
    real_forward = smol._forward

    def broken(idx, prep):
        raise ValueError("not an OOM")

    smol.forward = broken
    try:
        with pytest.raises(ValueError, match="not an OOM"):
            smol.score(requests_.slice(0, 1))
    finally:
        smol.forward = real_forward
