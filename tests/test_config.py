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
