"""Length stage on real rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.io.readers import read_table
from pipeline.models import resolve_model
from pipeline.stages import length
from pipeline.stages.length_filter import Length


@pytest.fixture(scope="module")
def sharegpt(real_dir: Path) -> pl.DataFrame:
    rows, _ = read_table(str(real_dir / "sharegpt_17k.parquet"))
    return rows.head(1500)


def test_counts_match_a_python_reference(sharegpt: pl.DataFrame) -> None:
    import re

    out = length(sharegpt, min_response_tokens=None)
    pat = re.compile(r"\w+|[^\w\s]")
    for i in range(0, 1500, 97):
        msgs = sharegpt["messages"][i].to_list()
        resp = sum(len(pat.findall(m["content"])) for m in msgs if m["role"] == "assistant")
        ins = sum(len(pat.findall(m["content"])) for m in msgs if m["role"] in ("system", "user"))
        row = out.row(i, named=True)
        assert row["len_response_tokens"] == resp
        assert row["len_instruction_tokens"] == ins
        assert row["len_total_tokens"] == sum(len(pat.findall(m["content"])) for m in msgs)
        assert row["len_turns"] == sum(m["role"] == "assistant" for m in msgs)
        assert row["len_messages"] == len(msgs)
        assert row["len_response_chars"] == sum(len(m["content"]) for m in msgs if m["role"] == "assistant")


def test_thresholds_drop_with_reasons(sharegpt: pl.DataFrame) -> None:
    out = length(sharegpt, min_response_tokens=20, max_total_tokens=3000, max_turns=6)
    assert out.height == sharegpt.height  # never removes rows
    dropped = out.filter(~pl.col("keep"))
    assert set(dropped["drop_reason"].unique()) <= {
        "length:response_tokens<20", "length:total_tokens>3000", "length:turns>6"}
    short = out.filter(pl.col("len_response_tokens") < 20)
    assert short.height > 0 and (~short["keep"]).all()
    # the first rule to fire names the row; later rules never overwrite it
    both = out.filter((pl.col("len_response_tokens") < 20) & (pl.col("len_turns") > 6))
    assert (both["drop_reason"] == "length:response_tokens<20").all()
    kept = out.filter(pl.col("keep"))
    assert kept["len_total_tokens"].max() <= 3000 and kept["len_turns"].max() <= 6


def test_hf_tokenizer_from_local_gguf(sharegpt: pl.DataFrame) -> None:
    gguf = resolve_model("smollm2").path
    small = sharegpt.head(40)
    out = Length(tokenizer=str(gguf), min_response_tokens=None)(small)
    words = length(small, min_response_tokens=None)
    # subword tokens outnumber words, and are exact counts of the real tokenizer
    assert (out["len_response_tokens"] >= words["len_response_tokens"] * 0.8).all()
    from pipeline.stages.length_filter import _hf_tokenizer

    tok = _hf_tokenizer(str(gguf))
    msgs = small["messages"][3].to_list()
    expect = sum(len(tok(m["content"], add_special_tokens=False)["input_ids"]) for m in msgs if m["role"] == "assistant")
    assert out["len_response_tokens"][3] == expect


def test_bad_params_name_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="min_response_tokens"):
        Length(min_response_tokens=-1)
    with pytest.raises(ValidationError, match="tokenizer"):
        Length(tokenizer="/no/such/tokenizer")
