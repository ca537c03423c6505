"""Hostile inputs: bad bytes, bad elements, BOMs, huge and deep records, invisible text.

Each case is a real file on disk read by the real readers; memory is measured in a child process.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import containers, readers
from pipeline.io.readers import SourceSpec, read_source, read_table
from pipeline.io.shards import ShardWriter, list_shards
from pipeline.schema import CANONICAL

REPO = Path(__file__).resolve().parents[2]


def _read(path: Path, **kw: object) -> tuple[pl.DataFrame, pl.DataFrame]:
    rows, rejects = [], []
    for b in read_source(SourceSpec(path=str(path), **kw), batch_rows=300):
        rows.append(b.rows)
        rejects.append(b.rejects)
    return pl.from_arrow(pa.concat_tables(rows)), pl.from_arrow(pa.concat_tables(rejects))  # type: ignore[return-value]


def _reasons(rejects: pl.DataFrame) -> dict[int, str]:
    return dict(zip(rejects["source_row"].to_list(), rejects["reason"].to_list(), strict=True))


def _bad_strings(values: list[bytes | None]) -> pa.Array:
    """A string array whose bytes are not checked: how a foreign writer puts bad UTF-8 into Parquet."""
    return pa.array(values, pa.binary()).view(pa.string())


# ---------------------------------------------------------------- Parquet: invalid UTF-8 in a cell


def _alpaca_with_bad_cells(path: Path, n: int = 1000, bad: tuple[int, ...] = (3, 500, 999)) -> None:
    instr = [f"question {i}".encode() for i in range(n)]
    for i in bad:
        instr[i] = b"caf\xe9 \xff question"
    t = pa.table({"instruction": _bad_strings(instr),  # type: ignore[arg-type]
                  "output": pa.array([f"answer {i}" for i in range(n)])})
    pq.write_table(t, path, row_group_size=400)


@pytest.mark.parametrize("vectorised", [True, False])
def test_parquet_invalid_utf8_cell_is_one_reject_and_the_shard_reads_back(
        tmp_path: Path, vectorised: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "bad.parquet"
    _alpaca_with_bad_cells(p)
    if not vectorised:
        monkeypatch.setattr(readers, "map_arrow_batch", lambda *a, **k: None)
    writer = ShardWriter(tmp_path / "store", 250, CANONICAL)
    n_read = 0
    rejects = []
    for b in read_source(SourceSpec(path=str(p)), batch_rows=300):
        writer.write(b.rows)
        rejects.append(b.rejects)
        n_read += b.n_read
    writer.close()
    store = pl.read_parquet(list_shards(tmp_path / "store"))  # every shard reads back
    rj = pl.from_arrow(pa.concat_tables(rejects))
    assert n_read == 1000
    assert store.height == 997
    assert _reasons(rj) == {i: "invalid UTF-8 in column 'instruction' (byte 3)" for i in (3, 500, 999)}
    assert rj["raw"].to_list()[0].startswith("caf\ufffd")
    assert store["source_row"].to_list() == [i for i in range(1000) if i not in (3, 500, 999)]
    assert store["messages"].list.first().struct.field("content").to_list()[:3] == ["question 0", "question 1", "question 2"]


def test_parquet_invalid_utf8_in_a_nested_turn(tmp_path: Path) -> None:
    turn = pa.struct([("from", pa.string()), ("value", pa.string())])
    values = [b"hi", b"hello", b"ok", b"bad \xc3\x28 bytes", b"x", b"y"]
    content = _bad_strings(values)  # type: ignore[arg-type]
    roles = pa.array(["human", "gpt"] * 3)
    structs = pa.StructArray.from_arrays([roles, content], fields=list(turn))
    convs = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6], pa.int32()), structs)
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"conversations": convs}), p)
    rows, rejects = _read(p)
    assert rows["source_row"].to_list() == [0, 2]
    assert _reasons(rejects) == {1: "invalid UTF-8 in column 'conversations[].value' (byte 4)"}


# ---------------------------------------------------------------- JSON arrays: one bad element


def _records(n: int) -> list[bytes]:
    return [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}).encode() for i in range(n)]


def test_json_array_bad_element_costs_only_itself(tmp_path: Path) -> None:
    els = _records(1000)
    els[10] = b'{"instruction": "bad \\q escape", "output": "x"}'
    els[20] = b'{"instruction": "caf\xe9", "output": "x"}'
    els[30] = b'{"instruction": "a" "output": "x"}'  # missing comma inside the element
    els[40] = b"nul"
    p = tmp_path / "a.json"
    p.write_bytes(b"[\n" + b",\n".join(els) + b"\n]\n")
    rows, rejects = read_table(str(p))
    assert rows.height + rejects.height == 1000
    r = _reasons(rejects)
    assert sorted(r) == [10, 20, 30, 40]
    assert r[10].startswith("malformed JSON at element 10")
    assert r[20] == "invalid UTF-8 in element 20"
    assert r[30].startswith("malformed JSON at element 30")
    assert rows["source_row"].to_list() == [i for i in range(1000) if i not in r]


def test_json_array_tiny_chunks_and_odd_layouts(tmp_path: Path) -> None:
    """Every split of the byte stream gives the same elements, including escaped quotes, brackets in
    strings, backslash runs at chunk edges and nested values."""
    recs = [{"instruction": 'say "[{," \\\\' + "\\" * (i % 5) + "é" * (i % 3), "output": [i, {"k": "]}"}]}
            for i in range(60)]
    p = tmp_path / "t.json"
    p.write_text(json.dumps(recs, ensure_ascii=False, indent=1 if True else None))
    for chunk in (1, 2, 3, 7, 64):
        got = list(containers._iter_json_array(str(p), chunk=chunk))
        assert [r for _, r in got] == recs


def test_json_array_truncation_and_trailing_data(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_bytes(b'[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}')
    rows, rejects = read_table(str(p))
    assert rows.height == 2 and _reasons(rejects) == {2: "unterminated JSON array after element 1"}
    p.write_bytes(b'[{"instruction": "a", "output": "b"}] {"junk": 1}')
    rows, rejects = read_table(str(p))
    assert rows.height == 1 and _reasons(rejects)[1].startswith("data after the end of the JSON array")


# ---------------------------------------------------------------- byte order marks and UTF-16/32


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be"])
@pytest.mark.parametrize("container", ["json", "jsonl", "jsonl.gz"])
def test_bom_and_utf16_32_read_every_row(tmp_path: Path, encoding: str, container: str) -> None:
    recs = [{"instruction": f"Grüße {i} 日本", "output": f"answer {i} 🙂"} for i in range(50)]
    text = json.dumps(recs, ensure_ascii=False) if container == "json" else \
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    data = text.encode(encoding)
    if encoding.endswith(("-le", "-be")) and encoding != "utf-16-le":  # with a BOM, as Windows tools write
        data = codecs.BOM_UTF16_BE + data if encoding == "utf-16-be" else codecs.BOM_UTF32_BE + data
    p = tmp_path / f"x.{container}"
    p.write_bytes(gzip.compress(data) if container.endswith(".gz") else data)
    rows, rejects = read_table(str(p))
    assert rejects.height == 0, rejects["reason"].to_list()
    assert rows["source_row"].to_list() == list(range(50))  # the first row is not lost to the BOM
    assert rows["messages"].to_list()[0][0]["content"] == "Grüße 0 日本"


def test_bad_utf16_is_named(tmp_path: Path) -> None:
    good = '[{"instruction": "a", "output": "b"}, '.encode("utf-16-le")
    p = tmp_path / "x.json"
    p.write_bytes(codecs.BOM_UTF16_LE + good + b"\x00\xd8" + '"x"]'.encode("utf-16-le"))  # a lone surrogate
    rows, rejects = read_table(str(p))
    assert rows.height == 1
    assert rejects["reason"].to_list()[0].startswith("undecodable utf-16-le text after element 0")


# ---------------------------------------------------------------- deep nesting


@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_deep_nesting_is_one_reject(tmp_path: Path, container: str) -> None:
    deep = b'{"instruction": "q", "output": "a", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    els = [*_records(3), deep, *_records(2)]
    p = tmp_path / f"d.{container}"
    p.write_bytes(b"[" + b",".join(els) + b"]" if container == "json" else b"\n".join(els))
    rows, rejects = read_table(str(p))
    assert rows["source_row"].to_list() == [0, 1, 2, 4, 5]
    assert _reasons(rejects) == {3: "nesting deeper than the limit of 128 levels (max_depth)"}
    # the limit is a setting; brackets inside strings do not count
    shallow = b'{"instruction": "[[[[[[", "output": "a", "x": [[[1]]]}'
    p.write_bytes(b"[" + shallow + b"]" if container == "json" else shallow)
    assert _read(p, max_depth=4)[1].height == 0
    assert _reasons(_read(p, max_depth=3)[1]) == {0: "nesting deeper than the limit of 3 levels (max_depth)"}


# ---------------------------------------------------------------- oversized records, bounded memory

_CHILD = r"""
import json, sys
from pipeline.io.readers import SourceSpec, read_source

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

out = {}
for path in sys.argv[1:]:
    list(read_source(SourceSpec(path=path.replace("big", "small"), max_record_bytes=1 << 20)))  # warm up (imports)
    base = hwm()
    n = rej = 0
    reasons = []
    for b in read_source(SourceSpec(path=path, max_record_bytes=1 << 20), batch_rows=100):
        n += b.n_read
        rej += b.rejects.num_rows
        reasons += b.rejects.column("reason").to_pylist()
    out[path] = {"read": n, "rejected": rej, "reasons": reasons, "grew_mb": hwm() - base}
print(json.dumps(out))
"""


def test_oversized_record_is_one_reject_with_bounded_memory(tmp_path: Path) -> None:
    """A 200 MB line in a small .jsonl.gz (and a 200 MB element in a .json.gz) with a 1 MB limit: one
    reject naming size and limit, the records around it read, and the reader's peak memory grows
    by far less than the record (it is never held)."""
    size = 200 << 20
    piece = b"x" * (1 << 20)
    good = json.dumps({"instruction": "q", "output": "a"}).encode()
    for name, head, sep, tail in (("big.jsonl.gz", b"", b"\n", b""), ("big.json.gz", b"[", b",", b"]")):
        with gzip.open(tmp_path / name, "wb", compresslevel=1) as f:
            f.write(head + good + sep + b'{"instruction": "')
            for _ in range(size // len(piece)):
                f.write(piece)
            f.write(b'", "output": "a"}' + sep + good + tail)
        (tmp_path / name.replace("big", "small")).write_bytes(gzip.compress(head + good + tail))
    paths = [str(tmp_path / "big.jsonl.gz"), str(tmp_path / "big.json.gz")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, env=env,
                         timeout=300, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for p in paths:
        r = out[p]
        assert (r["read"], r["rejected"]) == (3, 1), r
        assert r["reasons"][0].startswith(f"record of {size + 34:,} bytes exceeds the per-record limit of 1,048,576")
        assert r["grew_mb"] < 60, r  # the record is 200 MB; a reader that holds it grows by more than that


# ---------------------------------------------------------------- invisible-only text


INVISIBLE = ["\u0001", "\u200b", "\u200b\u200d\ufeff", "\u0000\u0007 \u0301", "\u3164", "\x1b[0m\u200b"[4:]]
VISIBLE = ["ok", " x ", "\u200bhi", "🙂", "日本"]


@pytest.mark.parametrize("container", ["jsonl", "parquet"])
def test_invisible_only_turns_are_rejects(tmp_path: Path, container: str) -> None:
    recs = [{"instruction": t, "output": "fine"} for t in INVISIBLE]
    recs += [{"instruction": "fine", "output": t} for t in INVISIBLE]
    recs += [{"instruction": t, "output": t} for t in VISIBLE]
    recs += [{"instruction": "q", "output": "   "}, {"instruction": "q", "output": ""}]  # blank: left to heuristics
    recs += [{"instruction": "q", "output": "a", "system": "\u200b"}]
    p = tmp_path / f"x.{container}"
    if container == "jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    else:
        pq.write_table(pa.Table.from_pylist([{"system": None, **r} for r in recs]), p)
    rows, rejects = read_table(str(p))
    r = _reasons(rejects)
    n = len(INVISIBLE)
    assert {i: r[i] for i in range(n)} == {i: "user turn holds only control or invisible characters" for i in range(n)}
    assert {n + i: r[n + i] for i in range(n)} == {n + i: "assistant turn holds only control or invisible characters"
                                               for i in range(n)}
    assert r[len(recs) - 1] == "system turn holds only control or invisible characters"
    assert len(r) == 2 * n + 1
    assert rows.height == len(VISIBLE) + 2


def test_vectorised_and_per_record_paths_agree_on_invisible_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    alphabet = ["\u0001", "\u200b", " ", "\n", "a", "\u0301", "\u3164", "\u2028", "\x1c", "é", "\u00ad"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 4))) for _ in range(400)]
    convs = [[{"from": "human", "value": texts[i]}, {"from": "gpt", "value": texts[-i - 1]}] for i in range(400)]
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"conversations": convs}), p)
    fast = read_table(str(p))
    monkeypatch.setattr(readers, "map_arrow_batch", lambda *a, **k: None)
    slow = read_table(str(p))
    assert fast[0].equals(slow[0]) and fast[1].sort("source_row").equals(slow[1].sort("source_row"))
