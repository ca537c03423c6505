"""Readers on every real file: exact row accounting, formats, ids, meta."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.readers import SourceSpec, read_source, read_table
from pipeline.schema import CANONICAL, REJECTS, message_id

# file -> (format, rows, rejects): the reject counts are what the files really contain
EXPECTED = {
    "alpaca_eval_judged.parquet": ("alpaca", 25757, 0),
    "alpaca_eval_reference.parquet": ("alpaca", 805, 0),
    "code_alpaca_2k.json.gz": ("alpaca", 2017, 0),
    "fastchat_dummy_conversation.json.gz": ("sharegpt", 500, 0),
    "gpteacher_codegen.json.gz": ("alpaca", 4535, 0),
    "gpteacher_roleplay.json.gz": ("alpaca", 1923, 0),
    "gpteacher_toolformer_dedupe_only.json.gz": ("alpaca", 7673, 0),
    "gpteacher_toolformer_sim0.6.json.gz": ("alpaca", 2396, 0),
    "gpteacher_toolformer_sim0.7.json.gz": ("alpaca", 3487, 0),
    "gpteacher_toolformer_sim0.8.json.gz": ("alpaca", 4709, 0),
    "gpteacher_toolformer_sim0.9.json.gz": ("alpaca", 5959, 0),
    "gsm8k_model_solutions.jsonl.gz": ("question_answer", 1319, 0),
    "gsm8k_test.jsonl.gz": ("question_answer", 1319, 0),
    "gsm8k_train.jsonl.gz": ("question_answer", 7473, 0),
    "humaneval.jsonl.gz": ("prompt_completion", 164, 0),
    "new_codealpaca.json.gz": ("alpaca", 4535, 0),
    "self_instruct_seed_tasks.jsonl.gz": ("self_instruct", 175, 0),
    "sharegpt_17k.parquet": ("sharegpt", 17222, 449),  # 170 with a zero-width-space-only answer
    "t0_templated_50k.parquet": ("prompt_completion", 55185, 0),
    "user_oriented_instructions.jsonl.gz": ("self_instruct", 252, 0),
}


def _count_records(path: Path) -> int:
    name = path.name
    if name.endswith(".parquet"):
        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as f:
        if ".jsonl" in name:
            return sum(1 for line in f if line.strip())
        return len(json.load(f))


def test_every_real_file_is_covered(real_dir: Path) -> None:
    files = {p.name for p in real_dir.iterdir() if p.suffix != ".md"}
    assert files == set(EXPECTED), f"update EXPECTED for: {files ^ set(EXPECTED)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_accounting(real_dir: Path, name: str) -> None:
    fmt, n_rows, n_rejects = EXPECTED[name]
    path = real_dir / name
    batches = list(read_source(SourceSpec(path=str(path)), batch_rows=4000))
    rows = sum(b.rows.num_rows for b in batches)
    rejects = sum(b.rejects.num_rows for b in batches)
    assert rows + rejects == _count_records(path)  # every record accounted for
    assert (rows, rejects) == (n_rows, n_rejects)
    assert {b.format for b in batches} == {fmt}
    assert all(b.n_read <= 4000 for b in batches)  # batches are bounded
    for b in batches:
        # the canonical columns first, then one typed column per unmapped input field
        assert pa.schema(list(b.rows.schema)[: len(CANONICAL)]).equals(CANONICAL)
        assert not set(b.rows.schema.names[len(CANONICAL):]) & set(CANONICAL.names)
        assert b.rejects.schema.equals(REJECTS)
    df = pl.from_arrow(batches[0].rows)
    roles = df["messages"].explode().struct.field("role").unique().to_list()
    assert set(roles) <= {"system", "user", "assistant", "tool"}
    assert df["source"].unique().to_list() == [name]


def test_sharegpt_odd_roles_and_rejects(real_dir: Path) -> None:
    rows, rejects = read_table(str(real_dir / "sharegpt_17k.parquet"))
    reasons = rejects["reason"].value_counts().sort("count", descending=True)
    got = dict(reasons.iter_rows())
    # 170 scraped answers are a lone zero-width space: broken rows, not training data
    assert got == {"assistant turn holds only control or invisible characters": 170, "no user turn": 136,
                   "empty conversation": 126, "no assistant turn": 17}
    # the raw row is kept, truncated, for inspection
    assert rejects["raw"].str.len_chars().max() <= 2000
    # source rows are the parquet row indices: the rejected ones really are empty there
    raw = pl.read_parquet(real_dir / "sharegpt_17k.parquet")
    empties = rejects.filter(pl.col("reason") == "empty conversation")["source_row"].to_list()
    assert all(len(raw["conversations"][i]) == 0 for i in empties[:20])
    multi = rows.filter(pl.col("messages").list.len() > 2)
    assert multi.height > 5000


def test_alpaca_mapping_and_meta(real_dir: Path) -> None:
    rows, _ = read_table(str(real_dir / "new_codealpaca.json.gz"))
    first = json.loads(gzip.decompress((real_dir / "new_codealpaca.json.gz").read_bytes()))[0]
    msgs = [{k: v for k, v in m.items() if v is not None} for m in rows["messages"][0].to_list()]
    assert msgs[0] == {"role": "user", "content": f"{first['instruction']}\n\n{first['input']}"}
    assert msgs[1] == {"role": "assistant", "content": first["output"]}
    # the unmapped 'response' field is kept losslessly as a column of its own
    assert rows["response"][0] == first["response"]
    assert rows["id"][0] == message_id(msgs)
    assert rows["source_row"].to_list() == list(range(rows.height))


def test_ids_are_content_hashes_across_sources(real_dir: Path) -> None:
    a, _ = read_table(str(real_dir / "gpteacher_codegen.json.gz"))
    b, _ = read_table(str(real_dir / "new_codealpaca.json.gz"))
    # revised Code Alpaca repeats GPTeacher codegen rows: identical messages -> identical ids
    shared = set(a["id"]) & set(b["id"])
    assert len(shared) > 100
    assert a["id"].n_unique() <= a.height


def test_forced_format_and_meta_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"prompt": "2+2?", "completion": "4", "lang": "en", "score": 0.5}) + "\n")
    rows, rejects = read_table(str(p), fmt="prompt_completion")
    assert rejects.height == 0
    assert rows.select("lang", "score").row(0) == ("en", 0.5)
    assert rows.schema["score"] == pl.Float64
    rows, rejects = read_table(str(p), fmt="sharegpt")
    assert rows.height == 0 and rejects["reason"].to_list() == ["missing field 'conversations'"]


def test_hf_datasets_sources(tmp_path: Path, real_dir: Path) -> None:
    datasets = pytest.importorskip("datasets")
    src = [json.loads(line) for line in gzip.decompress((real_dir / "gsm8k_test.jsonl.gz").read_bytes()).splitlines()][:50]
    ds = datasets.Dataset.from_list(src)
    ds.save_to_disk(str(tmp_path / "saved"))
    rows, rejects = read_table(str(tmp_path / "saved"))
    assert rows.height == 50 and rejects.height == 0
    jl = tmp_path / "g.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in src))
    batches = list(read_source(SourceSpec(path=str(jl), container="hf_load", hf_builder="json")))
    assert sum(b.rows.num_rows for b in batches) == 50
    assert pl.from_arrow(batches[0].rows)["id"].to_list() == rows["id"].to_list()
