"""Stages and selectors on every in-memory table kind, canonicalize, and errors that say what to call first.

Real rows: Code Alpaca (alpaca records) and FastChat's ShareGPT sample, read as a user would hold
them (a pandas frame from ``pd.read_json``, a ``datasets.Dataset``, a list of dicts).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import pipeline
from pipeline import select
from pipeline.frames import MissingColumnError, kind_of
from pipeline.io.readers import read_table
from pipeline.stages import heuristics, length, select_random, select_top_k


@pytest.fixture(scope="module")
def raw_records(real_dir: Path) -> list[dict]:
    with gzip.open(real_dir / "code_alpaca_2k.json.gz", "rt") as f:
        return json.load(f)[:300]


@pytest.fixture(scope="module")
def canonical(raw_records: list[dict]) -> pl.DataFrame:
    return pipeline.canonicalize(raw_records)


def test_canonicalize_matches_reading_the_file(real_dir: Path, raw_records: list[dict]) -> None:
    from_file, _ = read_table(str(real_dir / "code_alpaca_2k.json.gz"))
    want = from_file.head(300)
    for obj in (raw_records, pl.DataFrame(raw_records), pd.DataFrame(raw_records)):
        got = pipeline.canonicalize(obj, source="code_alpaca_2k.json.gz")
        got = got if isinstance(got, pl.DataFrame) else pl.from_pandas(got)
        assert got["id"].to_list() == want["id"].to_list()
        assert got["source_row"].to_list() == list(range(300))
        assert got["messages"].to_list() == want["messages"].to_list()
    assert isinstance(pipeline.canonicalize(pd.DataFrame(raw_records)), pd.DataFrame)  # the same kind back


def test_canonicalize_messages_lists_and_formats(real_dir: Path) -> None:
    conv = [{"role": "user", "content": "Write a regex for three digits."}, {"role": "assistant", "content": "^\\d{3}$"}]
    one = pipeline.canonicalize(conv)
    role_content = [{k: m[k] for k in ("role", "content")} for m in one["messages"].to_list()[0]]
    assert one.height == 1 and role_content == conv  # the other message fields (tool calls, ...) are null
    two = pipeline.canonicalize([conv, conv[:1] + [{"role": "assistant", "content": "[0-9]{3}"}]])
    assert two.height == 2 and two["id"].n_unique() == 2
    with gzip.open(real_dir / "fastchat_dummy_conversation.json.gz") as f:
        sg = pl.read_json(f)
    rows = pipeline.canonicalize(sg.to_arrow(), format="sharegpt")
    assert isinstance(rows, pa.Table) and rows.num_rows == sg.height
    with pytest.raises(ValueError, match="unknown format 'alpacca'"):
        pipeline.canonicalize(conv, format="alpacca")
    with pytest.raises(ValueError, match="unknown record format"):
        pipeline.canonicalize([{"text": "no known fields"}])


def test_canonicalize_never_loses_a_row_silently(raw_records: list[dict]) -> None:
    bad = [*raw_records[:5], {"instruction": "no answer"}, *raw_records[5:10]]
    with pytest.raises(ValueError, match=r"1 of 11 records .*record 5: missing field 'output'"):
        pipeline.canonicalize(bad)
    rows, rejects = pipeline.canonicalize(bad, rejects="return")
    assert rows.height + rejects.height == 11
    assert rejects["source_row"].to_list() == [5]


def test_every_kind_in_the_same_kind_out(canonical: pl.DataFrame) -> None:
    import datasets

    want = length(canonical, min_response_tokens=3)
    kinds = {
        "polars": canonical, "lazy": canonical.lazy(), "arrow": canonical.to_arrow(),
        "pandas": canonical.to_pandas(), "datasets": datasets.Dataset(canonical.to_arrow()),
    }
    for kind, obj in kinds.items():
        out = length(obj, min_response_tokens=3)
        assert kind_of(out) == kind, kind
        back = pl.from_pandas(out) if kind == "pandas" else pl.from_arrow(out.data.table) if kind == "datasets" \
            else out.collect() if kind == "lazy" else pl.from_arrow(out) if kind == "arrow" else out
        assert back["keep"].to_list() == want["keep"].to_list(), kind
        assert back["len_response_tokens"].to_list() == want["len_response_tokens"].to_list(), kind
        # selectors too, chained on the stage's output
        sel = select_top_k(out, 20, "len_response_tokens")
        assert kind_of(sel) == kind
        picked = (pl.from_pandas(sel) if kind == "pandas" else pl.from_arrow(sel.data.table) if kind == "datasets"
                  else sel.collect() if kind == "lazy" else pl.from_arrow(sel) if kind == "arrow" else sel)
        assert picked["selected"].fill_null(False).sum() == 20
    # a shuffled/selected Dataset is read through its indices, not its backing table
    ds = datasets.Dataset(canonical.to_arrow()).select(range(10, 20))
    assert pl.from_arrow(length(ds).data.table)["id"].to_list() == canonical["id"][10:20].to_list()
    with pytest.raises(TypeError, match="pass one split"):
        length(datasets.DatasetDict({"train": ds}))


def test_old_and_config_names_agree(canonical: pl.DataFrame) -> None:
    scored = length(canonical)
    a = select_random(scored, 25, seed=3)
    b = select.random(scored, budget=25, seed=3)
    assert a["select_rank"].to_list() == b["select_rank"].to_list()
    assert select.top_k(scored, 5, "len_response_tokens")["selected"].to_list() == \
        select_top_k(scored, 5, "len_response_tokens")["selected"].to_list()


def test_missing_columns_say_what_to_call_first(raw_records: list[dict], canonical: pl.DataFrame) -> None:
    raw = pd.DataFrame(raw_records)
    with pytest.raises(MissingColumnError, match=r"call pipeline\.canonicalize\(df\) first"):
        heuristics(raw)
    with pytest.raises(ValueError, match=r"'ppl' not in table.*written by the 'perplexity' stage: call "
                                         r"pipeline\.stages\.perplexity\(df\) first"):
        select_top_k(canonical, 10, "ppl")
    with pytest.raises(ValueError, match=r"'len_response_tokens' .*call pipeline\.stages\.length\(df\) first"):
        select_top_k(canonical, 10, "len_response_tokens")


def test_columns_that_came_in_keep_their_types(raw_records: list[dict]) -> None:
    """A Dataset built the usual way (string features) comes back with the same features for its own
    columns, so the result concatenates with the input."""
    import datasets

    canon = pipeline.canonicalize(raw_records[:50])
    ds = datasets.Dataset.from_list(canon.drop("meta", strict=False).to_dicts())
    out = length(ds)
    assert {k: out.features[k] for k in ds.features} == ds.features
    assert datasets.concatenate_datasets([ds, out.select_columns(ds.column_names)]).num_rows == 100
    arrow = ds.data.table
    back = heuristics(arrow)
    assert back.schema.field("messages").type == arrow.schema.field("messages").type
