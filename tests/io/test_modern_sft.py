"""Tool calls, tool messages, tool definitions and reasoning, read from every container.

Samples (data/sample/tool_calls/) follow the formats' published documentation: the OpenAI chat
format with ``tools`` / ``tool_calls`` / ``tool`` messages (and its legacy ``function_call``),
``reasoning_content`` as DeepSeek's and vLLM's APIs return it, ``<think>`` blocks as DeepSeek-R1 and
Qwen3 write them, and the ShareGPT tool layout of LLaMA-Factory's glaive-toolcall data
(``function_call`` / ``observation`` turns, ``tools`` as a JSON string).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.formats import split_think
from pipeline.io.readers import SourceSpec, read_source, read_table
from pipeline.schema import message_id, message_ids

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "sample" / "tool_calls"
OPENAI = SAMPLES / "openai_tools.jsonl"
SHAREGPT = SAMPLES / "sharegpt_toolcall.json"


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _clean(msgs: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if v is not None} for m in msgs]


@pytest.fixture(scope="module")
def openai_rows() -> pl.DataFrame:
    rows, rejects = read_table(str(OPENAI))
    assert rejects.height == 0, rejects["reason"].to_list()
    return rows


def test_openai_tool_calls_are_carried(openai_rows: pl.DataFrame) -> None:
    recs = _records(OPENAI)
    assert openai_rows.height == len(recs)
    m = _clean(openai_rows["messages"][0].to_list())
    assert m[2] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_8f3k2", "type": "function", "name": "get_weather",
         "arguments": '{"location":"Paris, France","unit":"celsius"}'}]}  # arguments verbatim
    assert m[3] == {"role": "tool", "content": recs[0]["messages"][3]["content"], "tool_call_id": "call_8f3k2"}
    # parallel calls beside content, tool messages with their names
    m = _clean(openai_rows["messages"][1].to_list())
    assert m[1]["content"] == "Let me check both cities and the flights."
    assert [c["id"] for c in m[1]["tool_calls"]] == ["call_a1", "call_a2", "call_a3"]
    assert [(x["tool_call_id"], x["name"]) for x in m[2:5]] == [
        ("call_a1", "get_weather"), ("call_a2", "get_weather"), ("call_a3", "search_flights")]
    # tools: canonical JSON of the definitions, one value per conversation
    assert json.loads(openai_rows["tools"][0]) == recs[0]["tools"]
    assert openai_rows["tools"][2] is None


def test_legacy_function_call_and_function_role(openai_rows: pl.DataFrame) -> None:
    m = _clean(openai_rows["messages"][4].to_list())
    assert m[1] == {"role": "assistant", "content": "", "tool_calls": [{
        "id": None, "type": "function", "name": "convert_currency", "arguments": '{"amount": 250, "from": "USD", "to": "EUR"}'}]}
    assert m[2] == {"role": "tool", "content": '{"amount": 231.75, "currency": "EUR"}', "name": "convert_currency"}


def test_reasoning_field_and_think_block(openai_rows: pl.DataFrame) -> None:
    m = _clean(openai_rows["messages"][2].to_list())
    assert m[1] == {"role": "assistant", "content": "It arrives at 12:15.",
                    "reasoning": "9:40 plus 2 hours is 11:40; plus 35 minutes is 12:15."}
    m = _clean(openai_rows["messages"][3].to_list())
    assert m[1] == {"role": "assistant", "content": "No. 221 = 13 × 17, so it is not prime.",
                    "reasoning": "Check small primes: 221 / 13 = 17, so 221 = 13 * 17."}
    # reasoning: fields keeps the think block in the content, verbatim
    rows, _ = read_table(str(OPENAI), reasoning="fields")
    raw = _records(OPENAI)[3]["messages"][1]["content"]
    assert rows["messages"][3].to_list()[1]["content"] == raw and rows["messages"][3].to_list()[1]["reasoning"] is None
    # the field wins over a think block; an unterminated block stays content
    assert split_think("<think>half a thought") == (None, "<think>half a thought")


def test_user_fields_are_typed_columns_and_source_is_namespaced(openai_rows: pl.DataFrame) -> None:
    recs = _records(OPENAI)
    assert openai_rows["source"].unique().to_list() == ["openai_tools.jsonl"]  # the tool's own column
    assert openai_rows["user.source"].to_list() == [r["source"] for r in recs]
    assert openai_rows["license"].to_list() == [r["license"] for r in recs]
    assert openai_rows.schema["turn_cost"] == pl.Int64
    assert "meta" not in openai_rows.columns


def test_ids_unchanged_for_plain_rows_and_cover_the_new_fields(openai_rows: pl.DataFrame) -> None:
    plain = openai_rows["messages"][5].to_list()
    # the role/content-only payload of the original schema, computed independently
    import xxhash
    payload = "".join(f"{m['role']}|{len(m['content'])}|{m['content']}" for m in plain)
    assert openai_rows["id"][5] == xxhash.xxh3_128_hexdigest(payload.encode())
    # a row with tool calls hashes its calls and tools: dropping either changes the id
    msgs, tools = openai_rows["messages"][0].to_list(), openai_rows["tools"][0]
    assert openai_rows["id"][0] == message_id(msgs, tools)
    assert message_id(msgs, None) != openai_rows["id"][0]
    no_calls = [{**m, "tool_calls": None} for m in msgs]
    assert message_id(no_calls, tools) != openai_rows["id"][0]
    # Polars payloads give the same ids as the Python reference
    assert message_ids(openai_rows["messages"], openai_rows["tools"]).to_list() == openai_rows["id"].to_list()


def test_sharegpt_function_call_roles(tmp_path: Path) -> None:
    rows, rejects = read_table(str(SHAREGPT))
    assert rejects.height == 0, rejects["reason"].to_list()
    src = json.loads(SHAREGPT.read_text())
    m = _clean(rows["messages"][0].to_list())
    assert [x["role"] for x in m] == ["system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool",
                                      "assistant"]
    assert m[2]["tool_calls"] == [{"id": None, "type": "function", "name": "calculate_bmi",
                                   "arguments": json.dumps({"weight_kg": 72, "height_m": 1.8})}]
    assert m[3] == {"role": "tool", "content": json.dumps({"bmi": 22.22})}
    assert json.loads(rows["tools"][0]) == json.loads(src[0]["tools"])
    # gpt text followed by a function_call turn: one assistant message with content and two calls
    m = _clean(rows["messages"][1].to_list())
    assert m[1]["content"] == "Sure, looking both up." and len(m[1]["tool_calls"]) == 2
    assert rows["tools"][2] is None  # "[]": no tools
    assert rows["category"].to_list() == [r["category"] for r in src]


def _as_arrow(records: list[dict]) -> pa.Table:
    """The OpenAI records as a Parquet/datasets table would hold them: tools as JSON text (tool
    schemas differ per row, so such datasets store them as strings, as xLAM and glaive do)."""
    return pa.Table.from_pylist([{**r, "tools": json.dumps(r["tools"]) if "tools" in r else None} for r in records])


def test_parquet_and_datasets_give_the_same_rows(openai_rows: pl.DataFrame, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    t = _as_arrow(_records(OPENAI))
    pq.write_table(t, tmp_path / "tools.parquet")
    pq_rows, rej = read_table(str(tmp_path / "tools.parquet"))
    assert rej.height == 0
    assert pq_rows["id"].to_list() == openai_rows["id"].to_list()
    assert [_clean(x) for x in pq_rows["messages"].to_list()] == [_clean(x) for x in openai_rows["messages"].to_list()]
    assert pq_rows["tools"].to_list() == openai_rows["tools"].to_list()
    # a DatasetDict: every split, a `split` column, source_row running on across splits
    ds = datasets.Dataset(datasets.table.InMemoryTable(t))
    dd = datasets.DatasetDict({"train": ds.select(range(4)), "test": ds.select(range(4, 6))})
    dd.save_to_disk(str(tmp_path / "dd"))
    hf_rows, rej = read_table(str(tmp_path / "dd"))
    assert rej.height == 0
    assert hf_rows["split"].to_list() == ["train"] * 4 + ["test"] * 2
    assert hf_rows["source_row"].to_list() == list(range(6))
    assert hf_rows["id"].to_list() == openai_rows["id"].to_list()
    assert hf_rows["user.source"].to_list() == openai_rows["user.source"].to_list()
    one, _ = read_table(str(tmp_path / "dd"), hf_split="test")
    assert one["id"].to_list() == openai_rows["id"].to_list()[4:] and "split" not in one.columns


def test_vectorised_think_split_matches_per_record(tmp_path: Path) -> None:
    """A plain Parquet chat source (vectorised path) splits think blocks as the per-record mappers do."""
    conv = [[{"role": "user", "content": f"q{i}"},
             {"role": "assistant", "content": f"<think>\n\nstep {i}\n</think>\n\nanswer {i}" if i % 2 else f"answer {i}"}]
            for i in range(6)]
    pq.write_table(pa.table({"messages": conv, "score": [float(i) for i in range(6)]}), tmp_path / "r.parquet")
    fast = pl.from_arrow(pa.concat_tables([b.rows for b in read_source(SourceSpec(path=str(tmp_path / "r.parquet")))]))
    slow, _ = read_table(str(tmp_path / "r.parquet"), container="parquet")
    jl = tmp_path / "r.jsonl"
    jl.write_text("\n".join(json.dumps({"messages": c, "score": float(i)}) for i, c in enumerate(conv)))
    slow, _ = read_table(str(jl))
    assert fast["id"].to_list() == slow["id"].to_list()
    assert fast["messages"].to_list() == slow["messages"].to_list()
    assert fast["messages"][1].to_list()[1]["reasoning"] == "step 1"
    assert fast["messages"][1].to_list()[1]["content"] == "answer 1"
    assert fast["score"].to_list() == slow["score"].to_list()


def test_csv_and_tsv_by_extension(tmp_path: Path) -> None:
    csv = tmp_path / "judged.csv"
    pl.DataFrame({"instruction": ["Say hi", "Add 2 and 3", "Name a colour"], "output": ["Hi!", "5", "Teal, a blue-green."],
                  "preference": [1.2, 1.9, 1.5], "source": ["a", "b", "c"], "annotator": ["x", "y", "x"]}).write_csv(csv)
    rows, rejects = read_table(str(csv))
    assert rejects.height == 0 and rows.height == 3
    assert rows.schema["preference"] == pl.Float64 and rows["user.source"].to_list() == ["a", "b", "c"]
    assert _clean(rows["messages"][1].to_list()) == [{"role": "user", "content": "Add 2 and 3"},
                                                     {"role": "assistant", "content": "5"}]
    tsv = tmp_path / "judged.tsv"
    pl.read_csv(csv).write_csv(tsv, separator="\t")
    rows2, _ = read_table(str(tsv))
    assert rows2["id"].to_list() == rows["id"].to_list()


def test_mixed_kinds_in_a_user_field_become_text(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    recs = [{"prompt": f"p{i}", "completion": f"c{i}", "rating": v, "tags": ["x", str(i)]}
            for i, v in enumerate([4, "n/a", 3.5, None])]
    p.write_text("\n".join(json.dumps(r) for r in recs))
    rows, _ = read_table(str(p))
    assert rows["rating"].to_list() == ["4", "n/a", "3.5", None]
    assert rows["tags"].to_list() == [r["tags"] for r in recs]  # a list of strings stays a list
    # batches of one source that type a field differently are unified (ints, then floats)
    p2 = tmp_path / "b.jsonl"
    p2.write_text("\n".join(json.dumps({"prompt": f"p{i}", "completion": "c", "n": i if i < 3 else i + 0.5})
                            for i in range(6)))
    bs = list(read_source(SourceSpec(path=str(p2)), batch_rows=3))
    assert [b.rows.schema.field("n").type for b in bs] == [pa.int64(), pa.float64()]
    rows, _ = read_table(str(p2))
    assert rows["n"].to_list() == [0.0, 1.0, 2.0, 3.5, 4.5, 5.5]


def test_source_schema_names_user_columns_before_work(real_dir: Path) -> None:
    from pipeline.io.readers import source_schema

    sc = source_schema(SourceSpec(path=str(real_dir / "alpaca_eval_judged.parquet")))
    assert sc.field("preference").type == pa.float64()
    assert sc.names[:5] == ["id", "source", "source_row", "messages", "tools"]
    assert "user.source" in source_schema(SourceSpec(path=str(OPENAI))).names


def test_two_threads_read_one_datasetdict(tmp_path: Path) -> None:
    """Two sources of a run open the same DatasetDict on the thread runner at once (the loads are
    serialised: `datasets` loads on threads raced on tqdm's lock); both read every split."""
    from concurrent.futures import ThreadPoolExecutor

    datasets = pytest.importorskip("datasets")
    t = _as_arrow(_records(OPENAI))
    ds = datasets.Dataset(datasets.table.InMemoryTable(t))
    datasets.DatasetDict({"a": ds, "b": ds.select(range(3))}).save_to_disk(str(tmp_path / "dd"))
    with ThreadPoolExecutor(max_workers=4) as ex:
        outs = list(ex.map(lambda i: read_table(str(tmp_path / "dd"), name=f"s{i}")[0], range(4)))
    assert all(o.height == 9 and o["split"].to_list() == ["a"] * 6 + ["b"] * 3 for o in outs)


def test_sharegpt_tool_rows_in_parquet(tmp_path: Path) -> None:
    """ShareGPT tool data stored as Parquet (turns {from, value}): function_call turns are not an
    unknown role on the vectorised path; the rows equal the JSON reading."""
    src = json.loads(SHAREGPT.read_text())
    pq.write_table(pa.Table.from_pylist([{"conversations": r["conversations"], "category": r["category"]} for r in src]),
                   tmp_path / "sg.parquet")
    rows, rejects = read_table(str(tmp_path / "sg.parquet"))
    assert rejects.height == 0, rejects["reason"].to_list()
    ref, _ = read_table(str(SHAREGPT))
    # same turns (the JSON rows also have a system prompt and tools, left out of the Parquet copy)
    assert [_clean(m)[-1] for m in rows["messages"].to_list()] == [_clean(m)[-1] for m in ref["messages"].to_list()]
    assert sum(len(m.get("tool_calls") or []) for r in rows["messages"].to_list() for m in r) == 4
