"""Decontamination: GSM8K test questions planted into the real GSM8K train pool, checked against a
pure-Python n-gram reference; HumanEval / user-oriented ids and short items; the embedding check."""

from __future__ import annotations

import gzip
import json
import random
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from pipeline.io.readers import read_table
from pipeline.stages import decontaminate
from pipeline.stages.decontam import Decontaminate

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"
BENCH = [str(REAL / f) for f in ("gsm8k_test.jsonl.gz", "humaneval.jsonl.gz", "user_oriented_instructions.jsonl.gz")]
N_VERBATIM, N_EDITED = 40, 40


def py_words(s: str) -> list[str]:
    s = unicodedata.normalize("NFKC", s).lower()
    return "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in s).split()


def first(messages: list[dict], role: str) -> str:
    return "\n\n".join(m["content"] for m in messages if m["role"] in role.split("|"))


def jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(x) for x in f]


def edit_words(text: str, k: int, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), k):
        words[i] = rng.choice(["blue", "seven", "quickly", "apples", "Tom", "several"])
    return " ".join(words)


@pytest.fixture(scope="module")
def bench_items() -> list[tuple[str, list[str], str]]:
    """(label, normalised words, normalised instruction) of every benchmark item, in index order."""
    out = []
    for path in BENCH:
        rows, _ = read_table(path)
        label = Path(path).name.split(".")[0]
        for r in rows.iter_rows(named=True):
            # the input's own id / task_id fields are user columns (`id` is the tool's name: `user.id`)
            ident = next((r[c] for c in ("user.id", "task_id") if r.get(c) is not None), r["source_row"])
            text = first(r["messages"], "system|user")
            out.append((f"{label}:{ident}", py_words(text), " ".join(py_words(text))))
    return out


def py_flags(rows: pl.DataFrame, items: list[tuple[str, list[str], str]], n: int = 13) -> dict[int, set[str]]:
    """Reference: row index -> labels of items it shares a word n-gram with (whole item when shorter
    than n, at least 8 words; shorter items only by an equal instruction)."""
    grams: dict[tuple[str, ...], set[str]] = {}
    exact: dict[str, set[str]] = {}
    for label, w, norm in items:
        if len(w) >= n:
            keys = {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
        elif len(w) >= 8:
            keys = {tuple(w)}
        else:
            exact.setdefault(norm, set()).add(label) if norm else None
            continue
        for g in keys:
            grams.setdefault(g, set()).add(label)
    widths = {len(g) for g in grams}
    out: dict[int, set[str]] = {}
    for i, m in enumerate(rows["messages"].to_list()):
        w = py_words(first(m, "system|user") + "\n\n" + first(m, "assistant"))
        hit: set[str] = set()
        for L in widths:
            for j in range(len(w) - L + 1):
                hit |= grams.get(tuple(w[j : j + L]), set())
        hit |= exact.get(" ".join(py_words(first(m, "system|user"))), set())
        if hit:
            out[i] = hit
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, list[int], list[int]]:
    """1500 real GSM8K train rows + 40 test questions verbatim + 40 with two words changed."""
    rng = random.Random(7)
    train = jsonl(REAL / "gsm8k_train.jsonl.gz")[:1500]
    test = jsonl(REAL / "gsm8k_test.jsonl.gz")
    verbatim = rng.sample(range(len(test)), N_VERBATIM + N_EDITED)
    recs = list(train)
    for j, t in enumerate(verbatim):
        q = test[t]["question"] if j < N_VERBATIM else edit_words(test[t]["question"], 2, rng)
        recs.append({"question": q, "answer": test[t]["answer"] if j < N_VERBATIM else "The answer is 42."})
    p = tmp_path_factory.mktemp("decontam") / "pool.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    rows, rejects = read_table(str(p))
    assert rejects.height == 0 and rows.height == len(recs)
    return rows, verbatim[:N_VERBATIM], verbatim[N_VERBATIM:]


@pytest.fixture(scope="module")
def flagged(pool: tuple[pl.DataFrame, list[int], list[int]]) -> pl.DataFrame:
    return decontaminate(pool[0], benchmarks=BENCH)


def test_verbatim_plants_are_caught_with_their_item(pool, flagged: pl.DataFrame) -> None:
    rows, verbatim, _ = pool
    planted = flagged.slice(1500, N_VERBATIM)
    assert planted["drop_reason"].to_list() == [f"decontam:gsm8k_test:{t}" for t in verbatim]
    assert not planted["keep"].any()
    assert (planted["decontam_coverage"] == 1.0).all()


def test_edited_plants_match_the_reference(pool, flagged: pl.DataFrame, bench_items) -> None:
    rows, _, edited = pool
    ref = py_flags(rows, bench_items)
    out = flagged.slice(1500 + N_VERBATIM, N_EDITED)
    got = out["decontam_match"].to_list()
    for j, t in enumerate(edited):
        want = ref.get(1500 + N_VERBATIM + j)
        if want is None:
            assert got[j] is None
        else:
            assert got[j] == f"gsm8k_test:{t}"
    # two changed words leave a 13-word run in nearly every GSM8K question
    assert sum(g is not None for g in got) >= 0.85 * N_EDITED


def test_unrelated_rows_are_not_flagged(pool, flagged: pl.DataFrame, bench_items) -> None:
    rows, _, _ = pool
    ref = py_flags(rows.head(1500), bench_items)
    got = {i: m for i, m in enumerate(flagged.head(1500)["decontam_match"].to_list()) if m is not None}
    # exactly the train rows that genuinely share a 13-gram with a test item (GSM8K has a few)
    assert set(got) == set(ref)
    assert all(got[i] in ref[i] for i in got)
    assert len(got) <= 3
    other, _ = read_table(str(REAL / "sharegpt_17k.parquet"))
    assert decontaminate(other.head(2000), benchmarks=BENCH)["decontam_match"].null_count() == 2000


def test_ids_short_items_and_relative_paths(bench_items) -> None:
    he, _ = read_table(str(REAL / "humaneval.jsonl.gz"))
    uo, _ = read_table(str(REAL / "user_oriented_instructions.jsonl.gz"))
    he12 = he.filter(pl.col("source_row") == 12)["messages"][0][0]["content"]
    uo8 = first(uo.filter(pl.col("source_row") == 8)["messages"][0].to_list(), "user")  # 12 words
    msgs = lambda u, a="ok": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = pl.DataFrame({
        "id": [str(i) for i in range(6)], "source": ["t"] * 6, "source_row": list(range(6)),
        "messages": [
            msgs("Please complete this function:\n" + he12),
            msgs("Rewrite: " + uo8 + " Thanks!"),
            msgs("Design a medium-level sudoku puzzle."),  # a 6-word item: equal instruction -> flagged
            msgs("Please design a medium-level sudoku puzzle for my kids."),  # contains it, but is another task
            msgs("Suggest a recipe for a vegan dessert"),
            msgs("What is 2 + 2?", "4"),
        ],
        "meta": [None] * 6,
    })
    # paths relative to a base directory (what a config file gives) are resolved against it
    st = Decontaminate({"benchmarks": ["humaneval.jsonl.gz", {"path": "user_oriented_instructions.jsonl.gz", "name": "uo"}]},
                       base_dir=str(REAL))
    out = st(rows)
    assert out["decontam_match"].to_list() == [
        "humaneval:HumanEval/12", "uo:user_oriented_task_8", "uo:user_oriented_task_133", None,
        "uo:user_oriented_task_132", None,
    ]
    assert out["drop_reason"][0] == "decontam:humaneval:HumanEval/12"
    s = st.summary()["benchmarks"]
    assert s["uo"]["short_items"] == 3 and s["humaneval"]["items"] == 164


@pytest.mark.slow
def test_embedding_check_catches_rewordings(tmp_path: Path) -> None:
    """Sentences in reverse order: 13-grams across sentence borders break, the meaning stays."""
    test = jsonl(REAL / "gsm8k_test.jsonl.gz")[:100]
    bench = tmp_path / "gsm8k_small.jsonl"
    bench.write_text("\n".join(json.dumps(t) for t in test))
    reworded = []
    for t in test[:20]:
        sents = [s for s in t["question"].split(". ") if s]
        reworded.append(". ".join(reversed(sents)))
    train = jsonl(REAL / "gsm8k_train.jsonl.gz")[:200]
    recs = [{"question": q, "answer": "x"} for q in reworded] + train
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    rows, _ = read_table(str(p))
    surface = decontaminate(rows, benchmarks=[str(bench)])
    both = decontaminate(rows, benchmarks=[str(bench)], embedding=True)
    got = both["decontam_match"].to_list()
    assert surface.head(20)["decontam_match"].null_count() >= 2  # the surface check alone misses some
    assert got[:20] == [f"gsm8k_small:{i}" for i in range(20)]
    assert (both.head(20)["decontam_sim"] >= 0.9).all()
    assert all(g is None for g in got[20:]), "an unrelated train row was flagged"
    assert both["decontam_sim"].null_count() == 0
