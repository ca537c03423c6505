"""Broken inputs: every bad row lands in rejects with its reason; the good rows survive."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.readers import SourceError, SourceSpec, read_source, read_table

GOOD = {"instruction": "Name a prime.", "output": "7"}


def _reasons(rejects: pl.DataFrame) -> dict[int, str]:
    return dict(zip(rejects["source_row"].to_list(), rejects["reason"].to_list(), strict=True))


def test_broken_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(GOOD).encode(),
        b'{"instruction": "cut',  # truncated
        json.dumps({"instruction": "x", "output": 3}).encode(),
        json.dumps({"instruction": "x"}).encode(),
        json.dumps({"conversations": []}).encode(),
        json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode(),
        json.dumps({"conversations": [{"from": "wizard", "value": "hi"}, {"from": "gpt", "value": "yo"}]}).encode(),
        b"[1, 2]",
        b'{"instruction": "\\ud800", "output": "x"}',
        b'{"instruction": "caf\xe9", "output": "x"}',
        b"",
        json.dumps({"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]}).encode(),
        json.dumps(GOOD).encode(),
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    rows, rejects = read_table(str(p))
    assert rows["source_row"].to_list() == [0, 12]
    r = _reasons(rejects)
    assert r[1].startswith("malformed JSON")
    assert r[2] == "field 'output' must be a string, got int"
    assert r[3] == "missing field 'output' (or 'response')"
    assert r[4] == "empty conversation"
    assert r[5] == "no assistant turn"
    assert r[6] == "conversations[0]: unknown role 'wizard'"
    assert r[7] == "record must be an object, got list"
    assert r[8].startswith("malformed JSON")  # lone surrogate
    assert r[9] == "invalid UTF-8"
    assert r[11] == "conversations[0]: content must be a string, got int"
    assert 10 not in r  # blank lines are not rows
    assert rows.height + rejects.height == 12


def test_broken_json_array(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('[{"instruction": "a", "output": "b"}, {"instruction": 1, "output": "b"}, 7, {"instruction": "c", "out')
    rows, rejects = read_table(str(p))
    assert rows.height == 1
    r = _reasons(rejects)
    assert r[1] == "field 'instruction' must be a string, got int"
    assert r[2] == "record must be an object, got int"
    assert r[3].startswith("malformed JSON at element 3")


def test_json_array_streams_across_chunks(tmp_path: Path) -> None:
    recs = [{"instruction": f"q{i} " + "é" * (i % 7), "output": str(i) * 50} for i in range(3000)]
    p = tmp_path / "big.json.gz"
    with gzip.open(p, "wt") as f:
        json.dump(recs, f)
    from pipeline.io import containers

    got = list(containers._iter_json_array(str(p), chunk=257))  # tiny chunks: every edge case of splitting
    assert [r for _, r in got] == recs


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(2000)))
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(data[: len(data) // 2])
    rows, rejects = read_table(str(p))
    assert rows.height > 0
    assert rejects.height == 1 and rejects["reason"][0].startswith("unreadable stream")


def test_parquet_wrong_types(tmp_path: Path) -> None:
    t = pa.table({"prompt": ["a", None, "c", "d"], "completion": ["x", "y", None, "w"], "n": [1, 2, 3, 4]})
    p = tmp_path / "t.parquet"
    pq.write_table(t, p)
    rows, rejects = read_table(str(p))
    assert rows["source_row"].to_list() == [0, 3]
    assert _reasons(rejects) == {1: "missing field 'prompt'", 2: "missing field 'completion' (or 'canonical_solution', 'response')"}


def test_unreadable_sources_fail_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nope.jsonl"):
        list(read_source(SourceSpec(path=str(tmp_path / "nope.jsonl"))))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="bad.parquet"):
        list(read_source(SourceSpec(path=str(bad))))
    odd = tmp_path / "data.xlsx"
    odd.write_text("a,b\n")
    with pytest.raises(SourceError, match="data.xlsx"):
        list(read_source(SourceSpec(path=str(odd))))


def test_empty_files(tmp_path: Path) -> None:
    for name in ("e.jsonl", "e.json"):
        (tmp_path / name).write_text("")
        rows, rejects = read_table(str(tmp_path / name))
        assert rows.height == 0 and rejects.height == 0
    (tmp_path / "a.json").write_text("[]")
    assert read_table(str(tmp_path / "a.json"))[0].height == 0


def test_unknown_format_rows_are_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"foo": 1}) + "\n" + json.dumps({"bar": 2}) + "\n")
    rows, rejects = read_table(str(p))
    assert rows.height == 0
    assert rejects["reason"].to_list() == ["unknown record format; set the source's format"] * 2
