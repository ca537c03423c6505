"""The compiled loops of pipeline._kernels against plain Python/NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline._kernels import minhash_matrix, ngram_shingles, pair_jaccard
from pipeline.dedup import band_keys, minhash_params, minhash_signatures, mix64

MASK = (1 << 64) - 1


def _py_mix(h: int) -> int:
    return int(mix64(np.array([h], dtype=np.uint64))[0])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_ngram_shingles_equal_a_python_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    lens = rng.integers(0, 12, 200)
    wh = rng.integers(0, 2**63, int(lens.sum()), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    flat, off = ngram_shingles(wh, lens.astype(np.int64), n)
    expect: list[int] = []
    s = 0
    for r, w in enumerate(lens.tolist()):
        words = [int(x) for x in wh[s : s + w]]
        grams = [words[p : p + n] for p in range(w - n + 1)] if w >= n else ([words] if w else [])
        for g in grams:
            h = 0xCBF29CE484222325
            for x in g:
                h = ((h ^ x) * 0x100000001B3) & MASK
            expect.append(_py_mix(h))
        assert off[r + 1] - off[r] == len(grams)
        s += w
    assert flat.tolist() == expect


def test_minhash_matrix_equals_numpy_broadcast() -> None:
    rng = np.random.default_rng(1)
    lens = np.array([0, 1, 3, 4, 5, 7, 8, 9, 40])
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = rng.integers(0, 2**64 - 1, int(lens.sum()), dtype=np.uint64)
    a, b = minhash_params(16, seed=3)
    sig = minhash_matrix(flat, off, a, b)
    assert (sig[0] == 0xFFFFFFFF).all()  # no hashes: all ones
    with np.errstate(over="ignore"):
        for r in range(1, len(lens)):
            x = flat[off[r] : off[r + 1]]
            ref = ((a[:, None] * x[None, :] + b[:, None]) >> np.uint64(32)).min(axis=1).astype(np.uint32)
            assert sig[r].tolist() == ref.tolist()
    assert (a & np.uint64(1)).all() and len(set(a.tolist())) == 16
    assert not np.array_equal(minhash_params(16, seed=4)[0], a)


@pytest.mark.parametrize(("bands", "rows"), [(10, 12), (20, 5), (1, 128), (9, 13)])
def test_band_keys_equal_a_python_reference(bands: int, rows: int) -> None:
    sig = np.random.default_rng(bands).integers(0, 2**32, (40, 128), dtype=np.uint32)
    keys = band_keys(sig, bands, rows, seed=7)
    assert keys.shape == (40, bands) and keys.dtype == np.uint64
    for i in (0, 17, 39):
        for j in range(bands):
            h = _py_mix(j + 7)
            for v in sig[i, j * rows : (j + 1) * rows].tolist():
                h = ((h ^ v) * 0x100000001B3) & MASK
            assert int(keys[i, j]) == _py_mix(h)
    # rows whose band values agree share that band's key, and only that one
    twin = sig[1].copy()
    twin[rows:] ^= 1
    k2 = band_keys(np.stack([sig[1], twin]), bands, rows, seed=7)
    assert k2[0, 0] == k2[1, 0] and (bands == 1 or (k2[0, 1:] != k2[1, 1:]).all())
    with pytest.raises(ValueError, match="signature slots"):
        band_keys(sig[:, :5], bands, rows)


def test_minhash_slot_agreement_estimates_jaccard() -> None:
    """The share of equal slots of two signatures is an unbiased estimate of the sets' Jaccard
    similarity, with the binomial spread of independent slots (a weak family would fail either)."""
    rng = np.random.default_rng(7)
    perms, pairs = 128, 400
    targets = rng.uniform(0.05, 0.95, pairs)
    rows, true_j = [], []
    for t in targets:
        inter = int(round(200 * t))
        common = rng.integers(0, 2**64 - 1, inter, dtype=np.uint64)
        extra = rng.integers(0, 2**64 - 1, 2 * (200 - inter), dtype=np.uint64)
        a_set = np.concatenate([common, extra[: 200 - inter]])
        b_set = np.concatenate([common, extra[200 - inter :]])
        rows += [a_set, b_set]
        true_j.append(inter / (400 - inter))
    lens = np.array([len(r) for r in rows])
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    sig = minhash_signatures(np.concatenate(rows), off, perms, seed=1)
    est = (sig[0::2] == sig[1::2]).mean(axis=1)
    j = np.array(true_j)
    err = est - j
    assert abs(err.mean()) < 0.01
    z = err / np.sqrt(j * (1 - j) / perms)
    assert 0.75 < z.std() < 1.25


def test_minhash_slots_are_a_prefix_of_the_full_signature() -> None:
    """Computing only the slots LSH uses (``slots=bands*rows``) gives the full signature's first slots."""
    rng = np.random.default_rng(5)
    lens = rng.integers(0, 40, 50)
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat = rng.integers(0, 2**64 - 1, int(lens.sum()), dtype=np.uint64)
    full = minhash_signatures(flat, off, 128, seed=3)
    part = minhash_signatures(flat, off, 128, seed=3, slots=120)
    assert part.shape == (50, 120)
    assert np.array_equal(part, full[:, :120])


def test_pair_jaccard_treats_lists_as_sets() -> None:
    rng = np.random.default_rng(3)
    lists = [rng.integers(0, 60, rng.integers(0, 90)).astype(np.uint32) for _ in range(120)]
    lists += [np.array([5, 5, 5], np.uint32), np.array([5], np.uint32), np.zeros(0, np.uint32)]
    lens = np.array([len(x) for x in lists])
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    vals = np.concatenate(lists)
    ia = np.concatenate([rng.integers(0, len(lists), 500), [120, 122, 122]]).astype(np.int64)
    ib = np.concatenate([rng.integers(0, len(lists), 500), [121, 122, 0]]).astype(np.int64)
    got = pair_jaccard(vals, off, ia, vals, off, ib)
    for k in range(len(ia)):
        x, y = set(lists[ia[k]].tolist()), set(lists[ib[k]].tolist())
        expect = len(x & y) / len(x | y) if x | y else 0.0
        assert got[k] == pytest.approx(expect)
    assert got[-3] == 1.0 and got[-2] == 0.0


def test_distinct_per_row_counts_distinct_values() -> None:
    from pipeline._kernels import distinct_per_row

    rng = np.random.default_rng(5)
    rows = [rng.integers(0, 40, rng.integers(0, 300)).astype(np.uint64) for _ in range(200)]
    off = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    got = distinct_per_row(np.concatenate(rows), off)
    assert got.tolist() == [len(set(r.tolist())) for r in rows]
