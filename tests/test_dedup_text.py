"""Text plumbing of pipeline.dedup: NFKC only where it can change a string, shingles unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from pipeline._nfkc import NFKC_MAY_CHANGE, code_points
from pipeline.io.readers import read_table
from pipeline.text import text_expr

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


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


def test_skipping_strings_outside_the_class_changes_nothing_on_real_data() -> None:
    """On every real file, NFKC of the strings the class lets through equals NFKC of all strings."""
    texts = []
    for f in sorted(REAL.iterdir()):
        if f.name == "README.md":
            continue
        rows, _ = read_table(str(f))
        texts.append(rows.select(text_expr("conversation").alias("t"))["t"].fill_null(""))
    s = pl.concat(texts)
    flagged = s.str.contains(NFKC_MAY_CHANGE)
    full = s.str.normalize("NFKC")
    assert (full != s).sum() > 0, "the real data has strings NFKC changes"
    assert full.filter(~flagged).equals(s.filter(~flagged))
    odd = pl.Series(["e\u0301", "\u1100\u1161", "\u09c7\u09be", "ﬁ", "Ａ", "n\u0303o", "plain ascii", "中文 é"])
    assert odd.str.contains(NFKC_MAY_CHANGE).to_list() == [True] * 6 + [False, False]
