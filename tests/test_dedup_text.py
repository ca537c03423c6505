"""Text plumbing of pipeline.dedup: NFKC only where it can change a string; the compiled word split
equals the regex split of normalize_text (pipeline._wordsep)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline._nfkc import NFKC_MAY_CHANGE, code_points
from pipeline._wordsep import SEPARATOR_RANGES, build
from pipeline.dedup import HASH_SEED, mix64, normalize_text, word_hashes
from pipeline.io.readers import read_table
from pipeline.text import text_expr

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def real_texts() -> list[pl.Series]:
    """The conversation text of every real file, one Series per file."""
    texts = []
    for f in sorted(REAL.iterdir()):
        if f.name == "README.md":
            continue
        rows, _ = read_table(str(f))
        texts.append(rows.select(text_expr("conversation").alias("t"))["t"].fill_null(""))
    return texts


def _class_points(cls: str) -> set[int]:
    out: set[int] = set()
    for a, b in re.findall(r"\\x\{([0-9A-F]+)\}(?:-\\x\{([0-9A-F]+)\})?", cls):
        out.update(range(int(a, 16), int(b or a, 16) + 1))
    return out


def test_stored_class_covers_this_pythons_unicode_data() -> None:
    stored = _class_points(NFKC_MAY_CHANGE)
    missing = code_points() - stored
    assert not missing, f"{len(missing)} code points NFKC may change are not in the class, e.g. {sorted(missing)[:5]}"
    assert 0xFB01 in stored and 0x0301 in stored and 0xFF21 in stored  # ligature, combining acute, fullwidth A
    assert not {ord(c) for c in "aé€中😀 "} & stored  # ASCII and NFKC-stable characters stay out


def test_skipping_strings_outside_the_class_changes_nothing_on_real_data(real_texts: list[pl.Series]) -> None:
    """On every real file, NFKC of the strings the class lets through equals NFKC of all strings."""
    s = pl.concat(real_texts)
    flagged = s.str.contains(NFKC_MAY_CHANGE)
    full = s.str.normalize("NFKC")
    assert (full != s).sum() > 0, "the real data has strings NFKC changes"
    assert full.filter(~flagged).equals(s.filter(~flagged))
    odd = pl.Series(["e\u0301", "\u1100\u1161", "\u09c7\u09be", "ﬁ", "Ａ", "n\u0303o", "plain ascii", "中文 é"])
    assert odd.str.contains(NFKC_MAY_CHANGE).to_list() == [True] * 6 + [False, False]


def test_stored_separators_are_what_this_polars_regex_matches() -> None:
    assert build() == SEPARATOR_RANGES
    flat = {c for a, b in SEPARATOR_RANGES for c in range(a, b + 1)}
    assert {ord(c) for c in " \t\n.,!?-_()[]{}'\"$+<=>^`|~\u3000\u2014\u00a0"} <= flat
    assert not {ord(c) for c in "azAZ09é中\u0301\x00"} & flat


def _py_word_hash(word: str, start: int) -> int:
    h = start
    for byte in word.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return int(mix64(np.array([h], dtype=np.uint64))[0])


def test_compiled_word_split_equals_the_regex_split_on_real_data(real_texts: list[pl.Series]) -> None:
    """Every real file (up to 4,000 rows each): the kernel's words per row equal normalize_text's
    words, and (on a sample) its hashes equal FNV-1a of each word's UTF-8 bytes written out in Python."""
    texts = pl.concat([t.head(4000) for t in real_texts])
    odd = pl.Series(["", "   ", "ﬁne Ｆｉｎｅ café\u0301", "x\u00a0y\u2014z", "中文，標點。 emoji😀ok", "A.B,C",
                     "MiXeD CASE Straße ÀÉÎ İstanbul ΣΊΣΥΦΟΣ", "ALL ASCII CAPS, Then Lower", None])
    texts = pl.concat([texts, odd.fill_null("")])
    wh, lens = word_hashes(texts)
    words = normalize_text(texts).str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    assert lens.tolist() == words.list.len().to_list()
    assert len(wh) == int(lens.sum())
    start = 0xCBF29CE484222325 ^ int(mix64(np.array([HASH_SEED], dtype=np.uint64))[0])
    offsets = np.concatenate([[0], np.cumsum(lens)])
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(len(texts) - len(odd), 300, replace=False), np.arange(len(texts) - len(odd), len(texts))])
    for r in rows.tolist():
        expect = [_py_word_hash(w, start) for w in words[r].to_list()]
        assert wh[offsets[r] : offsets[r + 1]].tolist() == expect, texts[r][:80]



def test_normalized_equal_matches_the_reference_expression(real_texts: list[pl.Series]) -> None:
    """Equality of normalize_expr on pairs of real texts and edited echoes (case, punctuation,
    spacing, full-width and ligature forms), and null where either side is null."""
    from pipeline.dedup import normalized_equal
    from pipeline.text import normalize_expr

    base = pl.concat([t.head(1000) for t in real_texts])
    base = base.filter(base.str.len_bytes() > 0)
    rng = np.random.default_rng(0)
    other = base.gather(rng.permutation(len(base)))
    echo = base.str.to_uppercase().str.replace_all(r"\s+", "  ").str.replace_all(r"([a-z])\.", "$1 ,")
    wide = base.head(500).str.replace_all("fi", "ﬁ", literal=True).str.replace_all("A", "Ａ", literal=True)
    a = pl.concat([base, base, base.head(500), base.head(3), pl.Series("t", [None, "x", None, "Hello, World!"])])
    b = pl.concat([other, echo, wide, base.head(3) + " extra", pl.Series("t", ["x", None, None, "hello world"])])
    got = normalized_equal(a, b)
    ref = pl.select(normalize_expr(pl.lit(a)) == normalize_expr(pl.lit(b))).to_series()
    assert got.to_list() == ref.to_list()
    assert got.sum() > len(base) // 2 and got.null_count() == 3
