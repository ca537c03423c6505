"""MinHash-LSH dedup on real rows, checked against a brute-force pure-Python Jaccard reference."""

from __future__ import annotations

import itertools
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from pipeline.dedup import connected_components
from pipeline.io.readers import read_table
from pipeline.stages import minhash_dedup
from pipeline.stages.minhash import MinHashDedup, MinHashParams, optimal_bands

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def py_normalize(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    s = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in s)
    return " ".join(s.split())


def py_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    w = py_normalize(text).split()
    if not w:
        return set()
    if len(w) < n:
        return {tuple(w)}
    return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}


def py_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def conversation_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


@pytest.fixture(scope="module")
def t0() -> pl.DataFrame:
    rows, _ = read_table(str(REAL / "t0_templated_50k.parquet"))
    return rows  # the input's `template` field is a user column of its own


@pytest.fixture(scope="module")
def t0_sub(t0: pl.DataFrame) -> pl.DataFrame:
    """Every template of four source datasets: long passages (duorc ParaphraseRC, quoref), a
    template-dominated one (dbpedia_14) and short news (ag_news)."""
    fam = pl.col("template").str.starts_with
    return t0.filter(fam("duorc_ParaphraseRC") | fam("quoref") | fam("dbpedia_14") | fam("ag_news"))


@pytest.fixture(scope="module")
def t0_out(t0_sub: pl.DataFrame) -> pl.DataFrame:
    return minhash_dedup(t0_sub)


def _pairs(out: pl.DataFrame) -> pl.DataFrame:
    d = out.filter(pl.col("dup_kind") == "minhash")
    k = out.select(pl.col("source_row").alias("dup_of_row"), pl.col("template").alias("keeper_template"),
                   pl.col("messages").alias("keeper_messages"))
    return d.join(k, on="dup_of_row", how="left")


def test_t0_templates_behave_as_documented(t0_out: pl.DataFrame) -> None:
    pairs = _pairs(t0_out)
    dataset = lambda c: pl.col(c).str.split("_").list.first()  # noqa: E731
    # 1. near-duplicates never cross source datasets
    assert (pairs.select(dataset("template") == dataset("keeper_template")).to_series()).all()
    # 2. the same passage rendered by another template of its dataset is a near-duplicate
    cross = pairs.filter(pl.col("template") != pl.col("keeper_template"))
    fam_cross = cross.select(dataset("template")).to_series().unique().to_list()
    assert "duorc" in fam_cross and "quoref" in fam_cross
    assert cross.height >= 300
    # 3. a long fixed template around a short input dominates the shingles: rows of
    #    dbpedia_14_given_a_list_of_category_what_does_the_title_belong_to collapse, while another
    #    dbpedia_14 template, whose wording is short, keeps its rows apart
    by_t = t0_out.group_by("template").agg((pl.col("dup_kind") == "minhash").fill_null(False).mean().alias("dup_rate"))
    rate = dict(by_t.iter_rows())
    assert rate["dbpedia_14_given_a_list_of_category_what_does_the_title_belong_to"] > 0.9
    assert rate["dbpedia_14_given_a_choice_of_categories_"] < 0.05
    # 4. every reported pair really is similar: pure-Python shingle Jaccard of row and keeper's
    #    component reaches the threshold (checked on a sample)
    for r in pairs.sample(60, seed=0).iter_rows(named=True):
        assert r["minhash_jaccard"] >= 0.7 - 1e-6  # float32
        comp = t0_out.filter(pl.col("minhash_component") == r["minhash_component"])
        mine = py_shingles(conversation_text(r["messages"]))
        best = max(py_jaccard(mine, py_shingles(conversation_text(m)))
                   for m, sr in zip(comp["messages"].to_list(), comp["source_row"].to_list(), strict=True)
                   if sr != r["source_row"])
        assert best >= 0.7 - 1e-9
        assert best >= r["minhash_jaccard"] - 1e-3


def test_recall_and_precision_against_brute_force(t0: pl.DataFrame) -> None:
    sub = t0.filter(pl.col("template").str.starts_with("quoref") | pl.col("template").str.starts_with("ag_news"))
    sub = sub.sample(700, seed=3)
    out = MinHashDedup(keeper="first")(sub)
    sets = [py_shingles(conversation_text(m)) for m in sub["messages"].to_list()]
    n = len(sets)
    true_pairs = [(i, j) for i, j in itertools.combinations(range(n), 2) if py_jaccard(sets[i], sets[j]) >= 0.7]
    assert len(true_pairs) > 50
    comp = out["minhash_component"].to_list()
    found = sum(comp[i] == comp[j] for i, j in true_pairs)
    assert found / len(true_pairs) >= 0.97
    # with the exact check every edge is real; a component may still chain rows through a middle one
    tu, tv = np.array(true_pairs).T
    ref = connected_components(n, tu, tv)
    ours = pd_codes(comp)
    # our components never join rows the reference puts apart
    joined = {}
    for o, r in zip(ours, ref, strict=True):
        joined.setdefault(o, set()).add(r)
    assert all(len(v) == 1 for v in joined.values())


def pd_codes(values: list[str]) -> np.ndarray:
    return pl.Series(values).cast(pl.Categorical).to_physical().to_numpy()


def test_lsh_parameters_match_datasketch() -> None:
    from datasketch import MinHashLSH

    for t, p in [(0.5, 128), (0.7, 128), (0.8, 256), (0.9, 64)]:
        lsh = MinHashLSH(threshold=t, num_perm=p)
        assert optimal_bands(t, p, 0.5, 0.5) == (lsh.b, lsh.r)
    assert MinHashParams(verify=False).lsh() == optimal_bands(0.7, 128, 0.5, 0.5)
    assert MinHashParams(bands=16, rows=8).lsh() == (16, 8)
    with pytest.raises(ValidationError, match="both bands and rows"):
        MinHashParams(bands=16)
    with pytest.raises(ValidationError, match="exceeds num_perm"):
        MinHashParams(bands=20, rows=8)


def test_short_and_empty_texts() -> None:
    msgs = lambda u, a: [{"role": "user", "content": u}, {"role": "assistant", "content": a}]  # noqa: E731
    rows = pl.DataFrame({
        "id": [str(i) for i in range(5)],
        "source": ["t"] * 5,
        "source_row": list(range(5)),
        "messages": [msgs("hi", "hello"), msgs("Hi!", "Hello."), msgs("hi", "bye"), msgs("", ""), msgs(" ", "")],
        "meta": [None] * 5,
    })
    out = minhash_dedup(rows, key="conversation", keeper="first")
    # texts shorter than the shingle are one shingle: equal after normalisation -> duplicate
    assert out["keep"].to_list() == [True, False, True, True, False]  # "user assistant" twice
    inst = minhash_dedup(rows, key="response", keeper="first")
    # empty texts have no shingles and take no part (they are not duplicates of each other)
    assert inst["keep"].to_list() == [True, False, True, True, True]
    assert inst["minhash_component"][3] is None and inst["minhash_component"][4] is None


def test_without_verification_lsh_alone(t0_sub: pl.DataFrame, t0_out: pl.DataFrame) -> None:
    out = minhash_dedup(t0_sub, verify=False)
    a = set(t0_out.filter(pl.col("dup_kind") == "minhash")["source_row"].to_list())
    b = set(out.filter(pl.col("dup_kind") == "minhash")["source_row"].to_list())
    # LSH alone finds (almost) the same rows; the exact check only removes a few false candidates
    assert len(a & b) / len(a | b) > 0.9
    assert out["minhash_jaccard"].null_count() == out.height


def test_exact_then_minhash_keeps_both_pointers(t0_sub: pl.DataFrame) -> None:
    from pipeline.stages.exact import ExactDedup

    doubled = pl.concat([t0_sub.head(300), t0_sub.head(50).with_columns(pl.col("source_row") + 10**6)])
    e = ExactDedup(key="conversation", keeper="first")(doubled)
    out = MinHashDedup(keeper="first")(e)
    exact = out.filter(pl.col("drop_reason") == "exact:dup")
    assert exact.height == 50
    assert (exact["dup_kind"] == "exact").all() and (exact["dup_of_row"] < 10**6).all()
    assert exact["minhash_component"].null_count() == 50  # took no part in the later stage
    assert (out.filter(pl.col("drop_reason") == "minhash:dup")["dup_kind"] == "minhash").all()


def test_resolution_by_keeper_does_not_chain() -> None:
    from pipeline.dedup import OldKeepers, resolve_duplicates

    # a ~ b ~ c, c not near a; ranks a < b < c
    rank = np.array([0, 1, 2])
    edges = (np.array([0, 1]), np.array([1, 2]))
    comp = resolve_duplicates(3, rank, edges, linkage="component")
    assert comp.is_dup.tolist() == [False, True, True] and comp.keeper_new.tolist() == [0, 0, 0]
    keep = resolve_duplicates(3, rank, edges, linkage="keeper")
    assert keep.is_dup.tolist() == [False, True, False] and keep.keeper_new.tolist() == [0, 0, 2]
    # a dropped row goes to its best-ranked kept neighbour; an old keeper outranks every new row
    rank = np.array([2, 0, 1])
    res = resolve_duplicates(3, rank, (np.array([0, 0]), np.array([1, 2])), linkage="keeper")
    assert res.is_dup.tolist() == [True, False, False] and res.keeper_new[0] == 1
    old = OldKeepers(pl.DataFrame({"kid": [0], "id": ["o"], "source": ["s"], "source_row": [0]}))
    res = resolve_duplicates(3, rank, (np.array([0]), np.array([1])), (np.array([1]), np.array([0])), old,
                             linkage="keeper")
    assert res.is_dup.tolist() == [False, True, False] and res.keeper_old.tolist() == [-1, 0, -1]


def test_keeper_linkage_drops_only_rows_near_a_kept_row(t0_sub: pl.DataFrame, t0_out: pl.DataFrame) -> None:
    """The default linkage on real T0 chains (one passage under many templates): every dropped row
    is within the threshold of its own keeper by a pure-Python Jaccard, while one keeper per
    connected component (``linkage: component``) drops rows far from their keeper."""
    comp = minhash_dedup(t0_sub, linkage="component")
    by_id = dict(zip(t0_sub["id"].to_list(), t0_sub["messages"].to_list(), strict=True))

    def far(out: pl.DataFrame) -> tuple[int, int]:
        d = out.filter(pl.col("dup_kind") == "minhash")
        n_far = sum(py_jaccard(py_shingles(conversation_text(m)), py_shingles(conversation_text(by_id[k]))) < 0.7
                    for m, k in zip(d["messages"].to_list(), d["dup_of"].to_list(), strict=True))
        return n_far, d.height

    far_keep, n_keep = far(t0_out)
    far_comp, n_comp = far(comp)
    assert far_keep == 0 and n_keep > 300
    assert far_comp > 0 and n_comp > n_keep
    kept = set(t0_out.filter(pl.col("keep"))["id"].to_list())
    assert set(t0_out.filter(pl.col("dup_kind") == "minhash")["dup_of"].to_list()) <= kept
    # what the component rule drops on top is only rows whose keeper is not near them
    extra = comp.filter(pl.col("dup_kind") == "minhash").join(
        t0_out.filter(pl.col("keep")).select("id"), on="id", how="semi")
    assert extra.height >= far_comp - 5


def test_in_memory_call_equals_scoring_the_whole_frame(t0_sub: pl.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded-memory in-memory call (hashing in slices, shingles of candidates recomputed) makes
    the same decisions as scoring the whole frame at once, as one shard of the engine would."""
    from pipeline.schema import with_decision

    st = MinHashDedup()
    st.setup()
    whole = st.decide(st.score_global(st.score(with_decision(t0_sub))))
    monkeypatch.setattr("pipeline.stages.minhash.IN_MEMORY_ROWS", 997)  # several slices
    sliced = minhash_dedup(t0_sub)
    assert t0_sub.height > 3 * 997 and whole["keep"].sum() < t0_sub.height
    for c in ("keep", "dup_of", "minhash_component", "minhash_jaccard"):
        assert whole[c].equals(sliced[c]), c


def test_python_call_follows_the_stage_contract(t0_sub: pl.DataFrame) -> None:
    """Like every stage's function form: a pandas table comes back as pandas with the same decisions,
    and a table that is not canonical fails with the hint naming the missing column."""
    from pipeline.frames import MissingColumnError

    sub = t0_sub.head(3000)
    pdf = sub.to_pandas()
    out = minhash_dedup(pdf)
    assert type(out) is type(pdf) and len(out) == sub.height
    assert out["keep"].tolist() == minhash_dedup(sub)["keep"].to_list()
    with pytest.raises(MissingColumnError, match="'source'.*canonicalize"):
        minhash_dedup(sub.drop("source"))
    with pytest.raises(ValueError, match="`messages` must hold lists.*canonicalize"):
        minhash_dedup(sub.with_columns(pl.col("id").alias("messages")))
