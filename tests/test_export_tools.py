"""Tool-calling and reasoning conversations: reader -> stages -> every export format -> reader, nothing lost.

Sources: OpenAI ``messages`` JSONL with ``tools`` / ``tool_calls`` / ``tool`` messages / legacy
``function_call`` / ``reasoning_content`` / ``<think>`` blocks, LLaMA-Factory ShareGPT tool data
(``function_call`` / ``observation``, ``tools`` JSON string), and a ``save_to_disk`` DatasetDict of
OpenAI rows (every split read, ``split`` column). Stages: length, heuristics, exact_dedup,
minhash_dedup. Every selected row must come back from every export with the same messages (tool
calls, tool messages, reasoning), tools, id and user fields; Alpaca takes the single-exchange rows
without tools and skips the others with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.engine import run
from pipeline.export import export
from pipeline.io.readers import read_table
from pipeline.io.shards import list_shards

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "sample" / "tool_calls"
FORMATS = ["messages", "sharegpt", "hf", "alpaca"]


def _clean(msgs: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if v is not None} for m in msgs]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import datasets

    base = tmp_path_factory.mktemp("tools_run")
    recs = [json.loads(x) for x in (SAMPLES / "openai_tools.jsonl").read_text().splitlines()]
    v2 = []
    for r in recs:  # other conversations of the same shape (not duplicates of the JSONL rows)
        msgs = [{**m, "content": m["content"] + " Please be brief."} if m["role"] == "user" else m for m in r["messages"]]
        v2.append({**r, "messages": msgs, "tools": json.dumps(r["tools"]) if "tools" in r else None})
    ds = datasets.Dataset(datasets.table.InMemoryTable(pa.Table.from_pylist(v2)))
    datasets.DatasetDict({"train": ds.select(range(4)), "validation": ds.select(range(4, 6))}).save_to_disk(str(base / "dd"))
    cfg = load_config({
        "run": {"name": "tools", "out": str(base / "runs"), "shard_rows": 4},
        "sources": [{"path": str(SAMPLES / "openai_tools.jsonl")}, {"path": str(SAMPLES / "sharegpt_toolcall.json")},
                    {"path": str(base / "dd"), "name": "dd"}],
        "stages": [{"stage": "length"}, {"stage": "heuristics"}, {"stage": "exact_dedup"}, {"stage": "minhash_dedup"}],
    })
    res = run(cfg, run_id="t1")
    assert res.counts["balanced"] and res.counts["rejected"] == 0
    return res.run_dir


@pytest.fixture(scope="module")
def shards(run_dir: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in list_shards(run_dir / "shards")], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def selected(run_dir: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in list_shards(run_dir / "selected")], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def exports(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("tool_exports")
    return {fmt: export(run_dir, fmt, base / fmt) for fmt in FORMATS}


def test_stages_keep_tool_and_reasoning_rows(shards: pl.DataFrame) -> None:
    assert shards.height == 6 + 3 + 6
    # nothing is empty or too short; the only drops are near-duplicates that MinHash finds between a
    # DatasetDict row and the JSONL row it was derived from (tool calls and results are in the key)
    dropped = shards.filter(~pl.col("keep"))
    assert set(dropped["drop_reason"]) <= {"minhash:dup"}
    assert set(dropped["source"]) == {"dd"} and set(dropped["dup_of_source"]) == {"openai_tools.jsonl"}
    assert not shards["heur_empty_response"].any()
    tool_only = shards.filter(pl.col("messages").list.eval(
        (pl.element().struct.field("tool_calls").list.len() > 0) & (pl.element().struct.field("content") == "")).list.any())
    assert tool_only.height >= 4 and not tool_only["heur_empty_response"].any()
    assert (tool_only["len_response_tokens"] > 0).all()
    reasoning = shards.filter(pl.col("messages").list.eval(pl.element().struct.field("reasoning").is_not_null()).list.any())
    assert reasoning.height == 4 and (reasoning["len_reasoning_tokens"] > 5).all()
    assert (shards["len_total_tokens"] >= shards["len_response_tokens"] + shards["len_reasoning_tokens"]).all()
    assert shards.filter(pl.col("source") == "openai_tools.jsonl")["len_tool_calls"].to_list() == [1, 3, 0, 0, 1, 0]
    assert shards.filter(pl.col("source") == "dd")["split"].to_list() == ["train"] * 4 + ["validation"] * 2


@pytest.mark.parametrize("fmt", ["messages", "sharegpt", "hf"])
def test_round_trip_loses_nothing(fmt: str, exports: dict, selected: pl.DataFrame) -> None:
    info = exports[fmt]
    assert info["exported"] == selected.height >= 12 and info["skipped"] == 0
    rows, rejects = read_table(info["data"])
    assert rejects.height == 0, rejects["reason"].to_list()
    assert rows["id"].to_list() == selected["id"].to_list()
    assert [_clean(m) for m in rows["messages"].to_list()] == [_clean(m) for m in selected["messages"].to_list()]
    assert rows["tools"].to_list() == selected["tools"].to_list()
    # the trace fields and the input's own fields, as they came in
    assert rows["user.id"].to_list() == selected["id"].to_list()
    assert rows["user.source"].to_list() == selected["source"].to_list()
    for col in ("license", "quality_tag", "turn_cost", "category"):
        assert rows[col].to_list() == selected[col].to_list(), col
    assert rows["user.split"].to_list() == selected["split"].to_list()  # `split` is the reader's own name
    assert rows.schema["turn_cost"] == pl.Int64


def test_messages_layout_is_openai(exports: dict) -> None:
    recs = [orjson.loads(x) for x in Path(exports["messages"]["data"]).read_bytes().splitlines()]
    r = next(x for x in recs if x.get("tools") and len(x["messages"]) == 6)
    call = r["messages"][1]
    assert call["tool_calls"][0] == {"id": "call_a1", "type": "function",
                                     "function": {"name": "get_weather", "arguments": '{"location": "Oslo, Norway"}'}}
    assert r["messages"][2] == {"role": "tool", "content": '{"temperature": -2, "conditions": "snow"}',
                                "tool_call_id": "call_a1", "name": "get_weather"}
    assert isinstance(r["tools"], list) and r["tools"][0]["function"]["name"] == "get_weather"
    thought = next(x for x in recs if any("reasoning_content" in m for m in x["messages"]))
    assert thought["messages"][1]["reasoning_content"]
    plain = next(x for x in recs if x["messages"][0]["content"] == "Name three primary colours.")
    assert all(set(m) == {"role", "content"} for m in plain["messages"]) and "tools" not in plain
    assert plain["license"] == "cc0-1.0"


def test_sharegpt_layout_is_llama_factory(exports: dict) -> None:
    recs = [orjson.loads(x) for x in Path(exports["sharegpt"]["data"]).read_bytes().splitlines()]
    froms = {t["from"] for r in recs for t in r["conversations"]}
    assert froms == {"system", "human", "gpt", "function_call", "observation"}
    bmi = next(r for r in recs if "calculate_bmi" in (r.get("tools") or ""))
    assert isinstance(bmi["tools"], str)
    call = next(t for t in bmi["conversations"] if t["from"] == "function_call")
    assert json.loads(call["value"]) == {"name": "calculate_bmi", "arguments": {"weight_kg": 72, "height_m": 1.8}}
    think = next(t for r in recs for t in r["conversations"] if t["value"].startswith("<think>\n"))
    assert "\n</think>\n\n" in think["value"]


def test_alpaca_takes_plain_single_exchanges_and_inlines_reasoning(exports: dict, selected: pl.DataFrame) -> None:
    info = exports["alpaca"]
    assert info["exported"] + info["skipped"] == selected.height
    assert set(info["skipped_by_reason"]) <= {"multi_turn", "tool_turn", "tool_calls", "tools"}
    rows, rejects = read_table(info["data"])
    assert rejects.height == 0
    want = selected.filter(pl.col("id").is_in(rows["id"].implode()))
    assert rows.height == want.height >= 6  # plain and reasoning rows of every source
    assert [_clean(m) for m in rows["messages"].to_list()] == [_clean(m) for m in want["messages"].to_list()]
    recs = [orjson.loads(x) for x in Path(info["data"]).read_bytes().splitlines()]
    assert any(r["output"].startswith("<think>\n") for r in recs)


def test_where_and_selection_on_user_columns(run_dir: Path, tmp_path: Path) -> None:
    info = export(run_dir, "messages", tmp_path / "gold.jsonl", where="quality_tag = 'gold' AND turn_cost > 1")
    recs = [orjson.loads(x) for x in Path(info["data"]).read_bytes().splitlines()]
    assert info["exported"] == len(recs) == 2 and {r["quality_tag"] for r in recs} == {"gold"}
    info = export(run_dir, "messages", tmp_path / "src.jsonl", where='"user.source" = \'reasoning-distill\'')
    assert info["exported"] == 4


# ---------------------------------------------------------------- the user's own columns, on real judged data


def test_user_columns_select_filter_and_export_alpaca_eval(tmp_path: Path) -> None:
    """AlpacaEval judged outputs: `preference` (the judge's score) is a Float64 column a selector ranks
    by, `--where` filters on `dataset`, and the export gives every field back under its own name."""
    import pyarrow.parquet as pq

    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "alpaca_eval_judged.parquet"
    src = tmp_path / "judged.parquet"
    pq.write_table(pq.read_table(real).slice(0, 3000), src)
    cfg = load_config({
        "run": {"name": "ae", "out": str(tmp_path / "runs")},
        "sources": [{"path": str(src)}],
        "stages": [{"stage": "select_top_k", "column": "preference", "budget": 100}],
    })
    res = run(cfg, run_id="ae")
    sel = pl.concat([pl.read_parquet(p) for p in list_shards(res.run_dir / "selected")], how="diagonal_relaxed")
    raw = pl.read_parquet(src)
    assert sel.schema["preference"] == pl.Float64 and sel.height == 100
    assert sel["preference"].min() >= raw["preference"].sort(descending=True)[99]
    info = export(res.run_dir, "messages", tmp_path / "x" / "train.jsonl", where="dataset = 'helpful_base' AND keep")
    recs = [orjson.loads(x) for x in Path(info["data"]).read_bytes().splitlines()]
    want = raw.with_row_index("r").filter(pl.col("dataset") == "helpful_base")
    assert len(recs) == want.height
    assert set(recs[0]) == {"messages", "id", "source", "source_row", "dataset", "model", "model_win_rate",
                            "reference_model", "preference"}
    assert [r["preference"] for r in recs] == want["preference"].to_list()
    assert [r["source_row"] for r in recs] == want["r"].to_list()
    assert info["user_columns"] == ["dataset", "model", "model_win_rate", "reference_model", "preference"]
