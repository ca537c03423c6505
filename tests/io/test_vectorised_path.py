"""The vectorised Arrow mapping gives exactly what the per-record mappers give."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io import readers
from pipeline.io.readers import SourceSpec, read_source


def _both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, tuple]:
    def collect() -> tuple[pl.DataFrame, pl.DataFrame]:
        bs = list(read_source(SourceSpec(path=str(path)), batch_rows=3000))
        return (pl.from_arrow(pa.concat_tables([b.rows for b in bs])),
                pl.from_arrow(pa.concat_tables([b.rejects for b in bs])))

    fast = collect()
    with monkeypatch.context() as m:
        m.setattr(readers, "map_arrow_batch", lambda *a, **k: None)
        slow = collect()
    return fast, slow


@pytest.mark.parametrize("name", ["sharegpt_17k.parquet", "t0_templated_50k.parquet", "alpaca_eval_reference.parquet"])
def test_same_rows_and_rejects(real_dir: Path, name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = real_dir / name
    if name == "t0_templated_50k.parquet":  # a slice keeps the per-record reference fast
        path = tmp_path / name
        pq.write_table(pq.read_table(real_dir / name).slice(0, 6000), path)
    (rows_f, rej_f), (rows_s, rej_s) = _both(path, monkeypatch)
    assert rows_f.select("id", "source", "source_row", "messages").equals(rows_s.select("id", "source", "source_row", "messages"))
    # every unmapped field is a user column, same name, same values, both ways
    assert rows_f.columns == rows_s.columns
    user = rows_f.columns[5:]
    assert rows_f.select(user).equals(rows_s.select(user))
    assert rej_f.select("source_row", "reason").equals(rej_s.select("source_row", "reason"))


def test_edge_cases_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conv = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    t = pa.table({
        "conversations": pa.array([
            [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
            [],
            None,
            [{"from": "human", "value": "hi"}],
            [{"from": "Narrator", "value": "x"}, {"from": "gpt", "value": "y"}],
            [{"from": None, "value": "x"}, {"from": "gpt", "value": "y"}],
            [{"from": "human", "value": None}, {"from": "gpt", "value": "y"}],
            [{"from": " GPT ", "value": "a"}, {"from": "Human", "value": "b"}, {"from": "bard", "value": "c"}],
            [{"from": "gpt", "value": "only"}],
        ], conv),
        "id": [str(i) for i in range(9)],
    })
    p = tmp_path / "c.parquet"
    pq.write_table(t, p)
    (rows_f, rej_f), (rows_s, rej_s) = _both(p, monkeypatch)
    assert rows_f.select("id", "source_row", "messages").equals(rows_s.select("id", "source_row", "messages"))
    assert rej_f.select("source_row", "reason").equals(rej_s.select("source_row", "reason"))
    assert rej_f["reason"].to_list() == [
        "empty conversation", "missing field 'conversations'", "no assistant turn",
        "conversations[0]: unknown role 'Narrator'", "conversations[0]: role must be a string, got NoneType",
        "conversations[0]: missing content", "no user turn"]

    a = pa.table({"instruction": ["a", None, "c", "d"], "input": ["", "x", None, " in "],
                  "output": ["o", "o", None, "o"], "system": [None, None, None, "be nice"], "extra": [1, 2, 3, 4]})
    p = tmp_path / "a.parquet"
    pq.write_table(a, p)
    (rows_f, rej_f), (rows_s, rej_s) = _both(p, monkeypatch)
    assert rows_f.select("id", "source_row", "messages").equals(rows_s.select("id", "source_row", "messages"))
    assert rej_f.select("source_row", "reason").equals(rej_s.select("source_row", "reason"))
    assert {k: v for k, v in rows_f["messages"][1].to_list()[0].items() if v is not None} == {"role": "system", "content": "be nice"}
    assert rows_f["extra"].to_list() == rows_s["extra"].to_list() == [1, 4]
