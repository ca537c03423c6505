"""Row-level progress of LM scoring inside a real run: announced, advanced per batch, finished."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline import progress
from pipeline.config import load_config
from pipeline.engine import run


def test_lm_scoring_reports_rows_as_batches_finish(smol, pool, tmp_path, max_tokens) -> None:
    src = tmp_path / "pool.jsonl"
    pool = pool.head(12)
    src.write_text("".join(json.dumps({"messages": m}) + "\n" for m in pool["messages"].to_list()))
    cfg = load_config({
        "run": {"name": "p", "out": str(tmp_path / "runs"), "shard_rows": 8, "report": False},
        "sources": [{"path": str(src)}],
        "stages": [{"stage": "perplexity", "max_tokens": max_tokens, "max_batch_size": 2, "cache": False}],
    })
    seen: list[tuple[str, int, int, bool]] = []
    with progress.sink(lambda t, fin: seen.append((t.name, t.done, t.total, fin)), interval=0.0):
        res = run(cfg, run_id="p", max_workers=1)
    assert res.manifest["status"] == "complete"
    lik = [s for s in seen if s[0].startswith("perplexity: ")]
    assert lik, seen
    done = [d for _, d, _, _ in lik]
    assert done == sorted(done) and len(set(done)) > 3, "advanced batch by batch, never backwards"
    name, last_done, last_total, finished = lik[-1]
    assert finished and last_done == last_total >= pool.height  # one unit per assistant turn
    line = progress.Task(name, last_total, last_done, started=0.0).line()
    assert f"{last_done:,}/{last_total:,} (100%)" in line


def test_lm_stage_scores_a_seeded_sample_only(smol, pool, max_tokens) -> None:
    """``sample``: an LM stage scores a seeded fraction of the rows (by id), the rest get null scores
    and are never dropped by its rules; the same seed picks the same rows."""
    from pipeline.scoring.stages import Perplexity
    from pipeline.stages.base import RunContext

    rows = pool.head(12)
    a = Perplexity(max_tokens=max_tokens, sample=0.5, drop_above=0.0, cache=False)(rows, RunContext(seed=3))
    scored = a["ppl"].is_not_null()
    assert 0 < scored.sum() < rows.height
    assert (~a.filter(scored)["keep"]).all() and a.filter(~scored)["keep"].all()  # the rule drops scored rows only
    b = Perplexity(max_tokens=max_tokens, sample=0.5, cache=False)(rows, RunContext(seed=3))
    assert b["ppl"].is_not_null().to_list() == scored.to_list()


def test_cancel_stops_a_running_stage_at_its_next_report_and_a_new_call_runs(smol, pool, max_tokens) -> None:
    """An interrupt (``progress.cancel``) ends LM scoring at its next batch report; the flag stays set
    for the other steps of the stopping run, and a new call from Python works again."""
    from pipeline.progress import Cancelled
    from pipeline.scoring.perplexity import Perplexity

    st = Perplexity(max_tokens=max_tokens, max_batch_size=1, cache=False)
    seen: list[int] = []

    def sink(t, _finished) -> None:
        seen.append(t.done)
        if t.done >= 1:
            progress.cancel()

    with progress.sink(sink, interval=0.0), pytest.raises(Cancelled):
        st(pool)
    assert progress.cancelled() and max(seen) < pool.height  # stopped before the last row
    out = st(pool)
    assert not progress.cancelled()
    assert out.filter(pl.col("keep"))["ppl"].is_not_null().all()
