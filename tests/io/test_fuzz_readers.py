"""Property-based bad input: the readers never crash, and every record is a row or a reject.

Generated records mix valid rows of every format with wrong types, missing keys, huge fields,
control characters, lone surrogates, deep nesting and random bytes; files are JSONL, JSON arrays,
gzip (whole or truncated) and Parquet.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.io.readers import SourceSpec, read_source

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=12,
)
value = st.one_of(text, junk, st.just("x" * 20_000), st.just("\x00\x01\x1b[31m"))
role = st.sampled_from(["human", "gpt", "user", "assistant", "system", "tool", "bard", "wizard", "", None])
turn = st.one_of(
    st.fixed_dictionaries({"from": role, "value": value}),
    st.fixed_dictionaries({"role": role, "content": value}),
    junk,
)
record = st.one_of(
    st.fixed_dictionaries({"instruction": value, "input": st.one_of(st.none(), value), "output": value}),
    st.fixed_dictionaries({"instruction": value, "response": value}),
    st.fixed_dictionaries({"conversations": st.one_of(st.lists(turn, max_size=5), junk)}),
    st.fixed_dictionaries({"messages": st.one_of(st.lists(turn, max_size=5), junk)}),
    st.fixed_dictionaries({"prompt": value, "completion": value}),
    st.fixed_dictionaries({"question": value, "answer": value}),
    junk,
)
line = st.one_of(
    record.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.just(b'{"instruction": "\\ud800", "output": "x"}'),
    st.just(b'{"instruction": "caf\xe9", "output": "x"}'),
    st.just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"),
)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])


def _account(path: Path, **kw: object) -> tuple[int, int, list[str]]:
    rows = rejects = 0
    reasons: list[str] = []
    for b in read_source(SourceSpec(path=str(path), **kw), batch_rows=7):
        rows += b.rows.num_rows
        rejects += b.rejects.num_rows
        reasons += b.rejects.column("reason").to_pylist()
        # every produced row is well-formed
        for msgs in b.rows.column("messages").to_pylist():
            assert any(m["role"] == "assistant" for m in msgs)
            assert all(isinstance(m["content"], str) for m in msgs)
    assert all(isinstance(r, str) and r for r in reasons)
    return rows, rejects, reasons


@FUZZ
@given(lines=st.lists(line, max_size=25))
def test_jsonl_never_crashes_and_accounts(tmp_path_factory, lines: list[bytes]) -> None:
    p = tmp_path_factory.mktemp("f") / "x.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    rows, rejects, _ = _account(p)
    assert rows + rejects == sum(1 for x in lines if x.strip())


@FUZZ
@given(records=st.lists(record, max_size=25), cut=st.integers(min_value=0, max_value=100))
def test_json_array_and_gzip(tmp_path_factory, records: list, cut: int) -> None:
    d = tmp_path_factory.mktemp("f")
    data = json.dumps(records).encode()
    (d / "a.json").write_bytes(data)
    rows, rejects, _ = _account(d / "a.json")
    assert rows + rejects == len(records)
    gz = gzip.compress(data)
    (d / "a.json.gz").write_bytes(gz[: max(1, len(gz) * cut // 100)])  # truncated gzip
    rows, rejects, _ = _account(d / "a.json.gz")
    assert rows + rejects <= len(records) + 1


@FUZZ
@given(records=st.lists(record, min_size=1, max_size=25))
def test_parquet_of_json_strings(tmp_path_factory, records: list) -> None:
    # heterogenous records cannot share an Arrow schema: store each field as JSON text, as exports do
    keys = sorted({k for r in records if isinstance(r, dict) for k in r})
    cols = {k: pa.array([json.dumps(r.get(k)) if isinstance(r, dict) and k in r else None for r in records],
                        pa.string()) for k in keys} or {"x": pa.array([None] * len(records), pa.string())}
    p = tmp_path_factory.mktemp("f") / "x.parquet"
    pq.write_table(pa.table(cols), p)
    rows, rejects, _ = _account(p)
    assert rows + rejects == len(records)


@FUZZ
@given(convs=st.lists(st.lists(st.fixed_dictionaries({"from": role, "value": st.one_of(st.none(), text)}),
                               max_size=4), min_size=1, max_size=25))
def test_parquet_sharegpt_vectorised(tmp_path_factory, convs: list) -> None:
    t = pa.table({"conversations": pa.array(convs, pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())])))})
    p = tmp_path_factory.mktemp("f") / "c.parquet"
    pq.write_table(t, p)
    rows, rejects, _ = _account(p)
    assert rows + rejects == len(convs)


HF_FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@HF_FUZZ
@given(records=st.lists(st.one_of(
    st.fixed_dictionaries({"instruction": st.one_of(st.none(), text, st.just("x" * 20_000)),
                           "output": st.one_of(st.none(), text, st.just("\x00\x01\x1b[31m"))}),
    st.fixed_dictionaries({"instruction": text}),  # no response column value
), min_size=1, max_size=25))
def test_hf_datasets_save_to_disk(tmp_path_factory, records: list) -> None:
    """A Hugging Face ``save_to_disk`` dataset (Arrow files, one schema) with nulls, missing
    responses, control characters and huge fields: every record is a row or a reject."""
    import datasets

    d = tmp_path_factory.mktemp("f") / "ds"
    cols = {"instruction": [r.get("instruction") for r in records], "output": [r.get("output") for r in records]}
    datasets.Dataset.from_dict(cols).save_to_disk(str(d))
    rows, rejects, reasons = _account(d)
    assert rows + rejects == len(records)
    # the same records as JSONL take the same decisions
    j = d.parent / "same.jsonl"
    j.write_text("".join(json.dumps({k: r.get(k) for k in ("instruction", "output")}) + "\n" for r in records))
    assert _account(j) == (rows, rejects, reasons)


@FUZZ
@given(records=st.lists(record, min_size=1, max_size=40), groups=st.integers(1, 6),
       bad=st.sets(st.integers(0, 5), max_size=3))
def test_parquet_with_corrupt_row_groups(tmp_path_factory, records: list, groups: int, bad: set[int]) -> None:
    """Garbled pages in some row groups: exactly those groups' rows are rejected, the rest read."""
    keys = sorted({k for r in records if isinstance(r, dict) for k in r}) or ["x"]
    cols = {k: pa.array([json.dumps(r.get(k)) if isinstance(r, dict) and k in r else None for r in records],
                        pa.string()) for k in keys}
    p = tmp_path_factory.mktemp("f") / "x.parquet"
    per = max(1, -(-len(records) // groups))
    pq.write_table(pa.table(cols), p, row_group_size=per, compression="zstd")
    md = pq.read_metadata(p)
    data = bytearray(p.read_bytes())
    lost = 0
    for g in sorted(bad):
        if g >= md.num_row_groups:
            continue
        col = md.row_group(g).column(0)
        start = col.dictionary_page_offset or col.data_page_offset
        for i in range(start, start + col.total_compressed_size):
            data[i] = 0xFF
        lost += md.row_group(g).num_rows
    p.write_bytes(bytes(data))
    rows, rejects, reasons = _account(p)
    assert rows + rejects == len(records)
    assert sum(r.startswith("unreadable Parquet row group") for r in reasons) == lost
