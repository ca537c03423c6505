"""`curate evaluate` end to end on a small real run, with the real SmolLM2 and TRL's SFTTrainer.

The run: Code Alpaca and GSM8K train (with its planted test items) from data/sample through length,
heuristics, exact dedup and a top-k selector. The evaluation is tiny (2 rows per arm, 3 steps,
96-token sequences, 2 items per target) so it costs seconds of training per arm; it checks that the
training loss falls, that the untuned base and the trained arms score differently, that the same
seeds give the same numbers, and that bad input is named before any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.engine import run
from pipeline.evaluate import EvaluationError, evaluate, evaluation_section_html, load_evaluation

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"

TINY = dict(budget=2, steps=3, batch_size=2, max_length=96, seeds=[0], baselines=["random"], learning_rate=2e-4,
            targets=["gsm8k", "humaneval"], target_items=2, accuracy_items=1, max_new_tokens=8)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("eval_run")
    cfg = load_config({
        "run": {"name": "ev", "out": str(base / "runs"), "shard_rows": 500},
        "sources": [{"path": str(SAMPLE / "code_alpaca.json")}, {"path": str(SAMPLE / "gsm8k_train_planted.jsonl.gz")}],
        "stages": [{"stage": "length", "min_response_tokens": 2, "max_total_tokens": 200},
                   {"stage": "heuristics"}, {"stage": "exact_dedup", "key": "conversation"},
                   {"stage": "select_top_k", "budget": 6, "column": "heur_rep_ngram_ratio", "descending": False}],
    })
    return run(cfg, run_id="ev").run_dir


def _cli_args(run_dir: Path, out: Path) -> list[str]:
    return ["evaluate", str(run_dir), "--out", str(out), "--budget", "2", "--steps", "3", "--batch-size", "2",
            "--max-length", "96", "--seeds", "0", "--baselines", "random", "--lr", "2e-4", "--target", "gsm8k",
            "--target", "humaneval", "--target-items", "2", "--accuracy-items", "1", "--max-new-tokens", "8",
            "--quiet"]


@pytest.fixture(scope="module")
def evaluated(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """The CLI writes evaluation.json into the run; the Python function repeats the selection arm elsewhere."""
    assert main(_cli_args(run_dir, run_dir)) == 0
    first = load_evaluation(run_dir)
    again = evaluate([run_dir], out=tmp_path_factory.mktemp("again"), **{**TINY, "baselines": [], "base": False})
    return first, again


def test_end_to_end(evaluated: tuple[dict, dict], run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, _ = evaluated
    assert [a["name"] for a in doc["arms"]] == ["select_top_k", "random"]
    assert {m["arm"] for m in doc["models"]} == {"base", "select_top_k", "random"}
    trained = [m for m in doc["models"] if m["arm"] != "base"]
    for m in trained:
        # three steps over the same two rows: the loss on them falls
        assert m["train"]["loss_last"] < m["train"]["loss_first"], m["train"]
        assert m["train"]["rows"] == 2 and m["train"]["steps"] == 3
    base = next(m for m in doc["models"] if m["arm"] == "base")
    for m in trained:
        for t in ("gsm8k", "humaneval"):
            assert m["scores"][t]["mean"] != pytest.approx(base["scores"][t]["mean"], abs=1e-6)
            assert len(m["scores"][t]["items"]) == 2
    assert len(base["scores"]["gsm8k_em"]["items"]) == 1
    # the record makes the result reproducible: data hashes, model, settings, wall time
    assert all(len(m["data_sha256"]) == 64 for m in trained)
    assert doc["model"]["ref"] == "smollm2" and doc["settings"]["seeds"] == [0] and doc["wall_s"] > 0
    assert set(doc["summary"]["vs_random"]["gsm8k"]) == {"base", "select_top_k"}
    html = evaluation_section_html(run_dir)
    assert html is not None and "Proof by training" in html and "data:image/png;base64," in html
    assert (run_dir / "figures" / "evaluation.png").stat().st_size > 0
    # the run's HTML report shows the comparison once the run was evaluated
    from pipeline.inspect import write_report

    report = write_report(run_dir).read_text()
    assert 'id="evaluation"' in report and "Proof by training" in report


def test_same_seeds_same_numbers(evaluated: tuple[dict, dict]) -> None:
    a, b = evaluated
    (mb,) = b["models"]
    ma = next(m for m in a["models"] if (m["arm"], m["seed"]) == (mb["arm"], mb["seed"]))
    assert ma["arm"] == "select_top_k" and ma["data_sha256"] == mb["data_sha256"]
    assert ma["train"]["loss_history"] == pytest.approx(mb["train"]["loss_history"], abs=1e-5)
    for t in ma["scores"]:
        assert ma["scores"][t]["items"] == pytest.approx(mb["scores"][t]["items"], abs=1e-5)
    assert ma["scores"]["gsm8k_em"]["generations"] == mb["scores"]["gsm8k_em"]["generations"]


def test_unevaluated_run_has_no_section(tmp_path: Path) -> None:
    assert evaluation_section_html(tmp_path) is None


# ---------------------------------------------------------------- bad input, named before training


def test_arm_smaller_than_budget(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _cli_args(run_dir, tmp_path)
    args[args.index("--budget") + 1] = "7"  # the selection holds 6 rows
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'select_top_k' has 6 rows, fewer than the budget of 7" in err
    assert not (tmp_path / "evaluation.json").exists()


def test_target_without_usable_rows(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [{"question": "2+2?", "answer": ""}, {"foo": 1}, "not json"]))
    with pytest.raises(EvaluationError, match=r"target 'mine' .* has no usable rows"):
        evaluate([run_dir], out=tmp_path, **{**TINY, "targets": [f"mine={bad}"]})


def test_model_that_does_not_load(run_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "wide"}')
    with pytest.raises(EvaluationError, match="does not load"):
        evaluate([run_dir], out=tmp_path, **{**TINY, "model": str(broken)})
    with pytest.raises(EvaluationError, match="not found"):
        evaluate([run_dir], out=tmp_path, **{**TINY, "model": str(tmp_path / "nowhere")})


def test_budget_that_does_not_fit_the_sequence_length(run_dir: Path, tmp_path: Path, evaluated: tuple) -> None:
    # SmolLM2's chat template alone (default system prompt + header) is longer than 16 tokens
    with pytest.raises(EvaluationError, match="does not fit"):
        evaluate([run_dir], out=tmp_path, **{**TINY, "max_length": 16})
    assert not (tmp_path / "evaluation.json").exists()


def test_bad_settings(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="baselines"):
        evaluate([run_dir], out=tmp_path, **{**TINY, "baselines": ["best"]})
    with pytest.raises(EvaluationError, match="not a run directory"):
        evaluate([tmp_path], out=tmp_path, **TINY)
