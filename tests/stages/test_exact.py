"""Exact dedup on real rows: counts against a pure-Python reference, keys, keeper policy, dup pointers."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import polars as pl
import pytest

from pipeline.io.readers import read_table
from pipeline.stages import exact_dedup
from pipeline.stages.exact import ExactDedup

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def py_normalize(s: str) -> str:
    """Reference normalisation: NFKC, lower case, punctuation/symbols -> space, whitespace collapsed."""
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in s)
    return " ".join(s.split())


def py_key(s: str) -> str:
    """The stage's key: the normalised text, or the text as written (white space folded) when
    normalising erases all of it (punctuation and symbols only)."""
    n = py_normalize(s)
    return n if n or not s.strip() else " ".join(s.split())


def py_instruction(messages: list[dict]) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))


@pytest.fixture(scope="module")
def sharegpt() -> pl.DataFrame:
    rows, _ = read_table(str(REAL / "sharegpt_17k.parquet"))
    return rows


@pytest.fixture(scope="module")
def sharegpt_instr(sharegpt: pl.DataFrame) -> pl.DataFrame:
    return exact_dedup(sharegpt, key="instruction")


def test_sharegpt_duplicate_instructions_found(sharegpt: pl.DataFrame, sharegpt_instr: pl.DataFrame) -> None:
    out = sharegpt_instr
    dropped = out.filter(~pl.col("keep"))
    assert dropped.height >= 824  # the count of exact duplicate instructions
    # the same number as a pure-Python dedup of the normalised instructions
    keys = [py_key(py_instruction(m)) for m in sharegpt["messages"].to_list()]
    assert dropped.height == len(keys) - len(set(keys))
    assert set(dropped["drop_reason"].unique()) == {"exact:dup"}
    assert set(dropped["dup_kind"].unique()) == {"exact"}
    # every row was accounted for: kept or dropped with a reason
    assert out.height == sharegpt.height
    assert out.filter(pl.col("keep"))["drop_reason"].null_count() == out["keep"].sum()


def test_dup_pointers_name_a_kept_row_with_the_same_key(sharegpt_instr: pl.DataFrame) -> None:
    out = sharegpt_instr
    keepers = out.filter(pl.col("keep")).select(
        pl.col("source").alias("dup_of_source"), pl.col("source_row").alias("dup_of_row"),
        pl.col("id").alias("keeper_id"), pl.col("messages").alias("keeper_messages"),
    )
    dropped = out.filter(~pl.col("keep")).join(keepers, on=["dup_of_source", "dup_of_row"], how="left")
    assert dropped["keeper_id"].null_count() == 0, "a dup_of points at a row that is not kept"
    assert (dropped["dup_of"] == dropped["keeper_id"]).all()
    for m, km in zip(dropped["messages"].to_list()[:300], dropped["keeper_messages"].to_list()[:300], strict=True):
        assert py_key(py_instruction(m)) == py_key(py_instruction(km))
    # one keeper per group: no kept row shares a hash with another kept row
    kept = out.filter(pl.col("keep"))
    assert kept["exact_hash"].n_unique() == kept.height


def test_default_keeper_is_longest_response(sharegpt_instr: pl.DataFrame) -> None:
    out = sharegpt_instr.with_columns(
        pl.col("messages").list.eval(
            pl.element().filter(pl.element().struct.field("role") == "assistant").struct.field("content").str.len_chars()
        ).list.sum().alias("rlen")
    )
    grp = out.group_by("exact_hash").agg(pl.col("rlen").max().alias("best"), pl.col("rlen").filter(pl.col("keep")).first().alias("kept"))
    assert (grp["best"] == grp["kept"]).all()


def test_keeper_first_and_score_column(sharegpt: pl.DataFrame) -> None:
    sub = sharegpt.head(4000)
    first = exact_dedup(sub, key="instruction", keeper="first")
    # first seen: a keeper always comes before its duplicates
    d = first.filter(~pl.col("keep"))
    assert d.height > 0
    assert (d["dup_of_row"] < d["source_row"]).all()
    # a score column decides: the highest score wins (here: the negated row number = first seen)
    scored = sub.with_columns((-pl.col("source_row")).cast(pl.Float64).alias("quality"))
    by_score = exact_dedup(scored, key="instruction", keeper="score", keeper_column="quality")
    assert by_score["keep"].to_list() == first["keep"].to_list()
    with pytest.raises(ValueError, match="keeper_column"):
        exact_dedup(sub, key="instruction", keeper="score", keeper_column="missing")


def test_texts_of_symbols_only_are_compared_as_written() -> None:
    """Normalising drops punctuation and symbols, so ASCII art and table rules would all become "" and
    be one another's duplicates; they are compared as written (white space folded) instead."""
    rows = ["| | |---|---|", "| | |---|---|", "|  |\n|---|---|", "│ ● │ ● │", "Hello, World!", "hello   world", "", "  "]
    df = pl.DataFrame({"id": [str(i) for i in range(len(rows))], "source": "t", "source_row": range(len(rows)),
                       "messages": [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": r}] for r in rows]})
    out = exact_dedup(df, key="response", keeper="first")
    assert out["keep"].to_list() == [True, False, False, True, True, False, True, False]
    assert out["dup_of"].to_list()[1:3] == ["0", "0"] and out["dup_of"][5] == "4"
    assert out["dup_of"][7] == "6"  # empty responses stay one group (the length stage's business)


def test_keys_are_multi_turn_aware() -> None:
    def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in turns]

    rows = pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "source": ["t"] * 4,
            "source_row": [0, 1, 2, 3],
            "messages": [
                conv(("user", "Hello, World!"), ("assistant", "Hi."), ("user", "Tell me a joke"), ("assistant", "No.")),
                conv(("user", "hello world"), ("assistant", "Hi!"), ("user", "Write a poem"), ("assistant", "No.")),
                conv(("user", "HELLO   world"), ("assistant", "hi")),
                conv(("user", "Something else"), ("assistant", "hi.")),
            ],
            "meta": [None] * 4,
        }
    )
    kept = lambda key: exact_dedup(rows, key=key, keeper="first")["keep"].to_list()  # noqa: E731
    assert kept("instruction") == [True, True, True, True]  # every user turn counts
    assert kept("first_instruction") == [True, False, False, True]
    assert kept("response") == [True, False, True, False]  # "Hi. No." == "Hi! No."; "hi" == "hi."
    assert kept("conversation") == [True, True, True, True]
    assert exact_dedup(rows, key="first_instruction", normalize=False, keeper="first")["keep"].to_list() == [True] * 4


def test_rows_dropped_earlier_take_no_part(sharegpt: pl.DataFrame) -> None:
    sub = sharegpt.head(3000)
    base = exact_dedup(sub, key="instruction", keeper="first")
    keeper_rows = base.filter(~pl.col("keep"))["dup_of_row"].unique()
    # drop every keeper before dedup: the stage must pick new keepers and never point at dropped rows
    pre = sub.with_columns(
        (~pl.col("source_row").is_in(keeper_rows.implode())).alias("keep"),
        pl.when(pl.col("source_row").is_in(keeper_rows.implode())).then(pl.lit("earlier:rule")).alias("drop_reason"),
    )
    out = ExactDedup(key="instruction", keeper="first")(pre)
    earlier = out.filter(pl.col("drop_reason") == "earlier:rule")
    assert earlier.height == keeper_rows.len()
    assert earlier["dup_of"].null_count() == earlier.height
    d = out.filter(pl.col("drop_reason") == "exact:dup")
    assert not d["dup_of_row"].is_in(keeper_rows.implode()).any()


def test_fast_normalisation_equals_the_reference_expression(sharegpt: pl.DataFrame) -> None:
    from pipeline.dedup import normalize_text
    from pipeline.text import normalize_expr, text_expr

    t = sharegpt.head(4000).select(text_expr("conversation").alias("t"))["t"]
    assert normalize_text(t).equals(pl.select(normalize_expr(pl.lit(t))).to_series().fill_null(""))
    odd = pl.Series(["Ｈｅｌｌｏ，\u3000Ｗｏｒｌｄ！", "ﬁne\u00a0tuning…", "Straße ÀÉ  ", "", "a\tb\n\nc", "x_y-z"])
    assert normalize_text(odd).to_list() == [py_normalize(s) for s in odd.to_list()][:4] + ["a b c", "x y z"]
