"""Property-based bad input: the readers never crash, and every record is a row or a reject.

Generated records mix valid rows of every format with wrong types, missing keys, huge fields,
control characters, lone surrogates, deep nesting and random bytes; files are JSONL, JSON arrays,
gzip (whole or truncated) and Parquet.
"""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.io import containers
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


# ---------------------------------------------------------------- JSON arrays with bad elements and BOMs

BAD_ELEMENTS = [  # each keeps the array's structure: brackets balance, strings close
    b'{"instruction": "bad \\q escape", "output": "x"}',
    b'{"instruction": "\\ud800", "output": "x"}',
    b'{"instruction": "x" "output": "y"}',
    b'{"instruction": "x", "output": "y",}',
    b'{"instruction": "x", "output": "y"} junk',
    b'{"k": [1, 2}]',
    b"nul",
    b"01",
    b"",
    b"   ",
    b"7",
    b'"just a string"',
    b"[1, 2]",
    b'{"instruction": "\\u200b", "output": "x"}',
    b'{"instruction": "q", "output": "\\u0001\\u200d"}',
    b"[" * 300 + b"]" * 300,
    b'{"instruction": "q", "output": "' + b"x" * 5000 + b'"}',  # over the 4 kB limit used below
]
BAD_UTF8 = [b'{"instruction": "caf\xe9", "output": "x"}', b'{"instruction": "x", "output": "\xff\xfe"}']
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"]
good_element = st.fixed_dictionaries({"instruction": text, "output": text}).map(lambda r: json.dumps(r).encode())
element = st.one_of(good_element, st.sampled_from(BAD_ELEMENTS).map(lambda b: (b,)),
                    st.sampled_from(BAD_UTF8).map(lambda b: (b,)))
separator = st.sampled_from([b",", b", ", b",\n  ", b"\r\n,\t"])


@FUZZ
@given(elements=st.lists(element, max_size=30), seps=st.lists(separator, min_size=30, max_size=30),
       encoding=st.sampled_from(ENCODINGS), gz=st.booleans(), chunk=st.integers(1, 64))
def test_json_array_bad_elements_and_boms(tmp_path_factory, elements: list, seps: list, encoding: str, gz: bool,
                                          chunk: int) -> None:
    """``read`` equals the number of elements whatever is wrong with some of them, every bad element is
    a reject at its own index, and the split does not depend on where the byte stream is cut."""
    if not encoding.startswith("utf-8"):
        elements = [e for e in elements if not (isinstance(e, tuple) and e[0] in BAD_UTF8)]  # text encodings
    bad = {i for i, e in enumerate(elements) if isinstance(e, tuple)}
    raw = [e[0] if isinstance(e, tuple) else e for e in elements]
    body = b"[" + b"".join(r + (seps[i] if i < len(raw) - 1 else b"") for i, r in enumerate(raw)) + b"]\n"
    if encoding.startswith("utf-8"):  # bytes as they are (the bad UTF-8 too), after a BOM for utf-8-sig
        data = (codecs.BOM_UTF8 if encoding == "utf-8-sig" else b"") + body
    else:
        data = body.decode("utf-8").encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    p = tmp_path_factory.mktemp("f") / ("a.json.gz" if gz else "a.json")
    p.write_bytes(gzip.compress(data) if gz else data)
    n = rejects = 0
    reject_rows: set[int] = set()
    for b in read_source(SourceSpec(path=str(p), max_record_bytes=4096), batch_rows=7):
        n += b.n_read
        rejects += b.rejects.num_rows
        reject_rows |= set(b.rejects.column("source_row").to_pylist())
        assert set(b.rows.column("source_row").to_pylist()).isdisjoint(bad)
    if raw == [b""] or raw == [b"   "]:  # "[]" and "[   ]" are empty arrays, not an empty element
        assert n == 0
        return
    assert n == len(elements)
    assert bad <= reject_rows
    assert len(reject_rows) == rejects  # one reject per row
    whole = list(containers._iter_json_array(str(p), max_bytes=4096))
    cut = list(containers._iter_json_array(str(p), chunk=chunk, max_bytes=4096))
    def same(items: list) -> list:  # the raw text of a too-deep element is what was buffered: compare reasons
        return [(i, r.reason if isinstance(r, containers._Raw) else repr(r)) for i, r in items]

    assert same(whole) == same(cut)
