"""Config validation: bad configs fail before any work, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def _src(sample_dir: Path) -> list[dict]:
    return [{"path": str(sample_dir / "code_alpaca.json")}]


def test_demo_config_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.sources and cfg.stages
    assert all(Path(cfg.resolve(s.path)).exists() for s in cfg.sources)


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"stages": [{"stage": "lenght"}]}, "stages[0] (lenght).stage: Value error, unknown stage 'lenght'; allowed: length"),
        ({"stages": [{"stage": "length", "min_respones_tokens": 3}]},
         "stages[0] (length).min_respones_tokens: unknown field; allowed: max_instruction_tokens"),
        ({"stages": [{"stage": "length", "min_response_tokens": "many"}]}, "stages[0] (length).min_response_tokens"),
        ({"stages": [{"stage": "heuristics"}, {"stage": "long_is_more"}]}, "stages[1] (long_is_more).budget: Field required"),
        ({"run": {"shard_rows": 0}}, "run.shard_rows: Input should be greater than or equal to 1"),
        ({"run": {"name": "../escape"}}, "run.name: String should match pattern"),
        ({"sources": []}, "sources: List should have at least 1 item"),
        ({"sources": [{"path": "x.jsonl", "format": "csv"}]}, "sources[0].format: Input should be 'auto'"),
        ({"sources": [{"path": "/no/such/file.jsonl"}]}, "sources[0].path: no such file or directory"),
        ({"colour": "blue"}, "colour: unknown field"),
    ],
)
def test_bad_configs_name_the_field(sample_dir: Path, patch: dict, needle: str) -> None:
    raw = {"sources": _src(sample_dir), "stages": [{"stage": "length"}], **patch}
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert needle in str(e.value)


def test_yaml_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("sources: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_relative_paths_resolve_against_the_config(tmp_path: Path, sample_dir: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text((sample_dir / "code_alpaca.json").read_text())
    p = tmp_path / "d" / "c.yaml"
    p.write_text("sources:\n  - path: a.json\nstages:\n  - stage: length\n")
    cfg = load_config(p)
    assert cfg.resolve(cfg.sources[0].path) == (tmp_path / "d" / "a.json").resolve()
    assert cfg.config_hash() == load_config(p).config_hash()


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        # a selector by a score no stage writes: names the selector, its field, the column and the stage to add
        ([{"stage": "length"}, {"stage": "select_top_k", "budget": 5, "column": "ifd"}],
         "stages[1] (select_top_k).column: needs column 'ifd', which no earlier stage writes; stage 'ifd' writes it: "
         "add it before stages[1]"),
        # the writer is listed, but after the reader
        ([{"stage": "kmq", "budget": 5, "score": "deita_score"}, {"stage": "deita"}],
         "stages[0] (kmq).score: needs column 'deita_score', which no earlier stage writes; stages[1] (deita) writes "
         "it but runs later"),
        # long_is_more declares that it needs the length stage's counts (it used to recompute them silently)
        ([{"stage": "heuristics"}, {"stage": "long_is_more", "budget": 5}],
         "stages[1] (long_is_more).by: needs column 'len_response_tokens'"),
        # a token budget reads the token column
        ([{"stage": "select_random", "budget": 100, "budget_unit": "tokens"}],
         "stages[0] (select_random).token_column: needs column 'len_response_tokens'"),
        ([{"stage": "length"}, {"stage": "kmq", "budget": 5, "score": "deita_scor"}],
         "no stage writes it (did you mean 'deita_score'?)"),
        ([{"stage": "length"}, {"stage": "cluster", "summary_columns": ["len_response_tokens", "ppl"]}],
         "stages[1] (cluster).summary_columns: needs column 'ppl'"),
        ([{"stage": "exact_dedup", "keeper": "score", "keeper_column": "judge_yes_prob"}],
         "stages[0] (exact_dedup).keeper_column: needs column 'judge_yes_prob'"),
        # a check in the stage's constructor is a config error too
        ([{"stage": "perplexity", "decide_on": "ppl_model"}], "stages[0] (perplexity): perplexity: decide_on must be"),
    ],
)
def test_columns_a_stage_needs_are_checked_before_any_work(sample_dir: Path, stages: list, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config({"sources": _src(sample_dir), "stages": stages})
    assert needle in str(e.value)


def test_columns_written_by_earlier_stages_pass(sample_dir: Path) -> None:
    cfg = load_config({"sources": _src(sample_dir), "stages": [
        {"stage": "length"}, {"stage": "ifd"}, {"stage": "select_top_k", "budget": 5, "column": "ifd"},
        {"stage": "select_random", "budget": 100, "budget_unit": "tokens"}, {"stage": "long_is_more", "budget": 3}]})
    assert [s.stage for s in cfg.stages][-1] == "long_is_more"


def test_a_stateful_stage_twice_in_a_run_that_keeps_state(sample_dir: Path) -> None:
    twice = [{"stage": "exact_dedup"}, {"stage": "length"}, {"stage": "exact_dedup", "key": "instruction"}]
    load_config({"sources": _src(sample_dir), "stages": twice})  # without state: fine
    with pytest.raises(ConfigError) as e:
        load_config({"sources": _src(sample_dir), "stages": twice, "run": {"save_state": True}})
    assert "stages[2] (exact_dedup): listed twice (also stages[0])" in str(e.value)
    # stateless stages may repeat
    load_config({"sources": _src(sample_dir), "stages": [{"stage": "length"}, {"stage": "length"}],
                 "run": {"save_state": True}})


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"stages": [{"stage": "length"}, {"stage": "select_top_k", "column": "len_response_tokens", "budget": 5,
                                           "min_value": float("nan")}]},
         "stages[1] (select_top_k).min_value: Input should be a finite number"),
        ({"stages": [{"stage": "perplexity", "drop_above": float("nan")}]},
         "stages[0] (perplexity).drop_above: Input should be a finite number"),
        ({"stages": [{"stage": "length", "max_response_tokens": float("inf")}]}, "stages[0] (length).max_response_tokens"),
        ({"run": {"shard_mb": float("inf")}}, "run.shard_mb: Input should be a finite number"),
        ({"run": {"max_record_mb": float("nan")}}, "run.max_record_mb: Input should be a finite number"),
        ({"flow": {"retry_delay_s": float("-inf")}}, "flow.retry_delay_s: Input should be a finite number"),
    ],
)
def test_nan_and_inf_are_refused_naming_the_field(sample_dir: Path, patch: dict, needle: str) -> None:
    raw = {"sources": _src(sample_dir), "stages": [{"stage": "length"}], **patch}
    with pytest.raises(ConfigError) as e:
        load_config(raw)
    assert needle in str(e.value)


def test_nan_from_yaml_is_refused(tmp_path: Path, sample_dir: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"sources:\n  - path: {sample_dir / 'code_alpaca.json'}\nrun:\n  shard_mb: .nan\n"
                 "stages:\n  - stage: select_top_k\n    column: x\n    budget: 3\n    max_value: .inf\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "run.shard_mb: Input should be a finite number" in msg


def test_every_float_param_of_every_stage_refuses_nan() -> None:
    """Generic, not per field: every float field of every stage's params refuses NaN."""
    from typing import get_args

    from pydantic import ValidationError

    from pipeline.stages import available_stages, get_stage

    def has_float(ann: object) -> bool:
        return ann is float or any(has_float(a) for a in get_args(ann))

    checked = 0
    for name in available_stages():
        params = get_stage(name).Params
        for field, info in params.model_fields.items():
            if not has_float(info.annotation):
                continue
            with pytest.raises(ValidationError, match="finite number"):
                params.model_validate({field: float("nan")})
            checked += 1
    assert checked > 10


def test_sources_with_the_same_file_name_get_distinct_labels(tmp_path: Path, sample_dir: Path) -> None:
    text = (sample_dir / "code_alpaca.json").read_text()
    for d in ("a", "b"):
        (tmp_path / "cfg" / d).mkdir(parents=True)
        (tmp_path / "cfg" / d / "data.json").write_text(text)
        (tmp_path / "out" / d).mkdir(parents=True)
        (tmp_path / "out" / d / "data.json").write_text(text)
    p = tmp_path / "cfg" / "c.yaml"
    p.write_text("sources:\n  - path: a/data.json\n  - path: b/data.json\n  - path: ../out/a/data.json\n"
                 "  - path: ../out/b/data.json\n  - path: a/data.json\n    name: again\nstages:\n  - stage: length\n")
    cfg = load_config(p)
    assert [s.name for s in cfg.sources] == ["cfg/a/data.json", "cfg/b/data.json", "out/a/data.json",
                                             "out/b/data.json", "again"]
    # the labels do not depend on the current directory, nor on where the config is
    moved = load_config({"sources": [{"path": str(tmp_path / "cfg" / d / "data.json")} for d in "ab"], "stages": []})
    assert [s.name for s in moved.sources] == ["a/data.json", "b/data.json"]
    # a unique file name stays the label, wherever the file is (as before labels were checked)
    mixed = load_config({"sources": [{"path": str(tmp_path / "cfg" / "a" / "data.json")},
                                     {"path": str(sample_dir / "code_alpaca.json")}], "stages": []})
    assert [s.name for s in mixed.sources] == ["data.json", "code_alpaca.json"]


def test_duplicate_source_labels_are_refused(tmp_path: Path, sample_dir: Path) -> None:
    src = str(sample_dir / "code_alpaca.json")
    with pytest.raises(ConfigError, match=r"sources\[1\].name: the label 'x' is also sources\[0\]'s"):
        load_config({"sources": [{"path": src, "name": "x"}, {"path": src, "name": "x"}], "stages": []})
    with pytest.raises(ConfigError, match=r"sources\[1\].name: the label '.*code_alpaca.json' is also sources\[0\]'s"):
        load_config({"sources": [{"path": src}, {"path": src}], "stages": []})
    # a single source keeps its file name as its label, as before
    assert load_config({"sources": [{"path": src}], "stages": []}).sources[0].name == "code_alpaca.json"


def test_reader_limits_per_run_and_source(sample_dir: Path) -> None:
    src = str(sample_dir / "code_alpaca.json")
    cfg = load_config({"run": {"max_record_mb": 2, "max_depth": 20},
                       "sources": [{"path": src, "name": "a"}, {"path": src, "name": "b", "max_record_mb": 0.5,
                                                                 "max_depth": 5}], "stages": []})
    assert cfg.reader_limits(cfg.sources[0]) == {"max_record_bytes": 2 << 20, "max_depth": 20}
    assert cfg.reader_limits(cfg.sources[1]) == {"max_record_bytes": 1 << 19, "max_depth": 5}
    assert load_config({"sources": [{"path": src}], "stages": []}).reader_limits() == \
        {"max_record_bytes": 64 << 20, "max_depth": 128}
    with pytest.raises(ConfigError, match="run.max_depth: Input should be less than or equal to 254"):
        load_config({"run": {"max_depth": 1000}, "sources": [{"path": src}], "stages": []})
