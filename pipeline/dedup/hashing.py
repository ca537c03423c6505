"""Text and hashing of the dedup stages: the text a dedup key means, normalised (:func:`text_series`), word
and word n-gram shingle hashes in Polars + NumPy + numba (:func:`shingle_hashes`), MinHash signatures
and LSH band keys, and a probe of these functions that incremental state is checked against
(:func:`hash_probe`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline._nfkc import NFKC_MAY_CHANGE
from pipeline._wordsep import separator_bits
from pipeline.text import text_expr

#: Fixed seeds: hashes must be identical across processes and runs (incremental state).
HASH_SEED = 0x5F7C_2A11


# ---------------------------------------------------------------- text and hashing


def hash_probe(minhash: bool = False) -> str:
    """A fingerprint of the hash functions a dedup state depends on (with ``minhash``: its signatures too).

    Polars documents its ``hash`` as stable only within one version, and this package's word and
    MinHash hashes may change between its releases; state written under other functions would
    silently match nothing, so state files record this probe and loading compares it.
    """
    import hashlib

    s = pl.Series(["sft-curate hash probe", "", "naïve café ﬁ 42 a b c"])
    parts: list[Any] = [s.hash(seed=HASH_SEED).to_list()]
    flat, off = shingle_hashes(normalize_text(s), n=2)
    parts.append(flat.tolist())
    if minhash:
        parts.append(minhash_signatures(flat, off, num_perm=8, seed=1).tolist())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def warm_up() -> None:
    """Load the compiled loops of :mod:`pipeline._kernels` with the argument types the stages pass
    (numba's start-up and on-disk cache load, ~0.7 s per process), so a runner can do it on a thread
    while it ingests. Never raises: a failure here shows again, with its cause, where the loop is used."""
    try:
        from pipeline._kernels import distinct_per_row, pair_jaccard

        texts = pl.Series(["Warm up the kernels, once", "naïve café"])
        flat, off = shingle_hashes(texts, 2)
        band_keys(minhash_signatures(flat, off, 8, 1), 2, 4)
        normalized_equal(texts, texts)
        distinct_per_row(flat, off)
        va, oa = list_buffer(pl.Series([[1, 2], [2, 3]], dtype=pl.List(pl.UInt32)))
        pair_jaccard(va, oa, np.array([0]), va, oa, np.array([1]))
    except Exception:  # noqa: BLE001, S110 - warming is an optimisation only
        pass


def normalize_text(s: pl.Series) -> pl.Series:
    """:func:`pipeline.text.normalize_expr` on a Series, same output, about 3x faster.

    NFKC runs only on the strings with a character it may change
    (:data:`pipeline._nfkc.NFKC_MAY_CHANGE`; the others are NFKC-invariant), and the
    punctuation/symbol and whitespace folds are one regex pass (a run of either becomes one space).
    """
    return _folded(s).str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars()


def _folded(s: pl.Series) -> pl.Series:
    """NFKC, then lower-cased: the first two steps of :func:`normalize_text` (nulls as "")."""
    return _nfkc(s).str.to_lowercase()


def _fold_non_ascii(s: pl.Series) -> pl.Series:
    """``s`` (nulls as "") with NFKC and lower-casing applied to the rows holding a non-ASCII
    character only: an ASCII row is NFKC-stable, and what lower-casing does to it (A-Z only) the
    word kernel does as it hashes, while counts of word characters do not depend on case. The rows
    that need Polars' Unicode passes are usually few."""
    s = s.fill_null("")
    wide = _non_ascii(s)
    return s.scatter(wide, _folded(s.gather(wide))) if len(wide) else s


def _non_ascii(s: pl.Series) -> pl.Series:
    """Positions of the strings holding a non-ASCII character (far cheaper than a regex: their
    UTF-8 length differs from their length in characters)."""
    return (s.str.len_bytes() != s.str.len_chars()).fill_null(False).arg_true()


def _nfkc(s: pl.Series) -> pl.Series:
    """NFKC of every string (nulls as ""), run only on those holding a character it may change."""
    s = s.fill_null("")
    wide = _non_ascii(s)  # ASCII strings are NFKC-stable
    if len(wide):
        unstable = wide.gather(s.gather(wide).str.contains(NFKC_MAY_CHANGE).arg_true())
        if len(unstable):
            s = s.scatter(unstable, s.gather(unstable).str.normalize("NFKC"))
    return s


def text_series(df: pl.DataFrame, key: str, normalize: bool = True) -> pl.Series:
    """The key text of every row of ``df`` (a view of :mod:`pipeline.text`), normalised unless told not to."""
    t = df.select(text_expr(key).alias("_t"))["_t"]
    return normalize_text(t) if normalize else t.fill_null("")


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the bits of a combined hash (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def word_hashes(texts: pl.Series, seed: int = HASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the words of each text: ``(uint64 hashes in text order, words per row)``.

    The words are those of :func:`normalize_text` split on spaces: after NFKC and lower-casing (in
    Polars), maximal runs of characters that are not punctuation, symbols or white space
    (:data:`pipeline._wordsep.SEPARATOR_RANGES`, the classes of Polars' regex). Each word is
    hashed as FNV-1a of its UTF-8 bytes (from a start value drawn from ``seed``) finished with
    splitmix64, by a compiled loop over the Arrow string buffer (:mod:`pipeline._kernels`).
    Compute them once and pass them to :func:`shingles_from_words` for several shingle widths.
    """
    from pipeline._kernels import FNV_OFFSET, utf8_word_hashes

    # the kernel lower-cases ASCII as it hashes (fold_ascii)
    buf, off = utf8_buffer(_fold_non_ascii(texts))
    start = FNV_OFFSET ^ mix64(np.array([seed], dtype=np.uint64))[0]
    return utf8_word_hashes(buf, off, _separator_bits(), start, True)


def _large_array(s: pl.Series, typ: pa.DataType) -> pa.Array:
    """``s`` as one Arrow array of type ``typ`` (64-bit offsets), as the compiled loops read it."""
    arr = s.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if arr.type == typ else arr.cast(typ)


def utf8_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string Series and each row's offsets into them (a null row is empty):
    what the compiled loops of :mod:`pipeline._kernels` read (a view where Arrow allows it)."""
    arr = _large_array(texts.fill_null(""), pa.large_string())
    _, offsets, data = arr.buffers()
    off = np.frombuffer(offsets, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    buf = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return buf, off


def list_buffer(lists: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The values of a column of ``uint32`` hash lists and each row's offsets into them (a null
    list is empty), for the compiled loops."""
    s = lists.cast(pl.List(pl.UInt32))
    if s.null_count():
        s = s.fill_null(pl.Series([[]], dtype=pl.List(pl.UInt32)))
    arr = _large_array(s, pa.large_list(pa.uint32()))
    return arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy().astype(np.int64)


def normalized_equal(a: pl.Series, b: pl.Series) -> pl.Series:
    """``normalize_text(a) == normalize_text(b)`` row by row (null where either is null).

    Only rows that can be equal are normalised. Normalisation keeps exactly the word characters
    (neither punctuation, symbol nor space) of the NFKC, lower-cased text, so two texts whose counts
    of those differ cannot be equal; the counts come from a compiled loop over the UTF-8 bytes, on
    the raw text for ASCII rows (NFKC and lower-casing keep their word characters) and on the NFKC,
    lower-cased text for the others. Equal counts are rare unless the texts are near copies.
    """
    from pipeline._kernels import nonseparator_counts

    if len(a) != len(b):
        raise ValueError(f"normalized_equal: {len(a)} rows against {len(b)}")
    sep = _separator_bits()

    def counts(s: pl.Series) -> np.ndarray:
        return nonseparator_counts(*utf8_buffer(_fold_non_ascii(s)), sep)

    rows = np.flatnonzero(counts(a) == counts(b))
    out = np.zeros(len(a), dtype=bool)
    if len(rows):
        idx = pl.Series(rows)
        out[rows] = (normalize_text(a.gather(idx)) == normalize_text(b.gather(idx))).to_numpy()
    res = pl.Series("normalized_equal", out)
    return pl.select(pl.when(a.is_null() | b.is_null()).then(None).otherwise(res)).to_series().alias("normalized_equal")


@lru_cache(maxsize=1)
def _separator_bits() -> np.ndarray:
    return separator_bits()


def shingle_hashes(texts: pl.Series, n: int = 5, seed: int = HASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Word n-gram shingles of texts, hashed: ``(flat uint64 hashes, row offsets)``.

    Texts are normalised as by :func:`normalize_text` (raw or already normalised text give the same
    shingles) and split into words (:func:`word_hashes`); each n-gram hash is an FNV-style combine
    of its word hashes finished with splitmix64 (:func:`shingles_from_words`). A text with fewer
    than ``n`` (but at least one) words is one shingle of all its words, so short texts can still
    match; an empty text has no shingles (offsets of row ``i``: ``off[i]:off[i+1]``).
    """
    return shingles_from_words(*word_hashes(texts, seed), n)


def shingles_from_words(wh: np.ndarray, lens: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The shingle hashes of :func:`shingle_hashes` from word hashes (:func:`word_hashes`)."""
    from pipeline._kernels import ngram_shingles

    return ngram_shingles(np.ascontiguousarray(wh, dtype=np.uint64), np.ascontiguousarray(lens, dtype=np.int64), int(n))


def minhash_signatures(flat: np.ndarray, off: np.ndarray, num_perm: int, seed: int,
                       slots: int | None = None) -> np.ndarray:
    """MinHash signatures (Broder 1997) of each row's shingle set: ``uint32 (rows, num_perm)``.

    Slot ``j`` is the minimum over the row's shingle hashes ``x`` of the multiply-add-shift hash
    ``((a_j x + b_j) mod 2^64) >> 32`` (Dietzfelbinger et al. 1997; ``a_j`` odd), the same family
    rensa's R-MinHash and datasketch's ``(a x + b) mod p`` stand for: one independent hash function
    per slot, so each slot of two signatures agrees with probability ~ their Jaccard similarity.
    ``a_j, b_j`` come from splitmix64 of ``seed`` and ``j``, so signatures depend on nothing but
    the inputs. Computed by a compiled loop (:func:`pipeline._kernels.minhash_matrix`).
    Rows without shingles get the all-ones signature; callers exclude them. ``slots``: compute only
    the first ``slots`` values of each signature (the ones LSH bands use when ``bands * rows <
    num_perm``); they equal those of the full signature.
    """
    from pipeline._kernels import minhash_matrix

    slots = num_perm if slots is None else min(int(slots), num_perm)
    if len(off) <= 1:
        return np.zeros((0, slots), np.uint32)
    a, b = (v[:slots].copy() for v in minhash_params(num_perm, seed))
    return minhash_matrix(np.ascontiguousarray(flat, dtype=np.uint64), np.ascontiguousarray(off, dtype=np.int64), a, b)


def minhash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``(a, b)`` of :func:`minhash_signatures`' hash functions (``a`` odd), from splitmix64."""
    with np.errstate(over="ignore"):
        k = mix64(np.array([seed], dtype=np.uint64)) * np.uint64(2 * num_perm + 1) + np.arange(2 * num_perm, dtype=np.uint64)
    v = mix64(mix64(k)).reshape(num_perm, 2)
    # contiguous: a strided view would make the kernel compile for any layout, unvectorised
    return np.ascontiguousarray(v[:, 0] | np.uint64(1)), np.ascontiguousarray(v[:, 1])


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int = HASH_SEED) -> np.ndarray:
    """LSH band keys: one uint64 per (row, band), hashing that band's ``rows`` signature values
    (the FNV-style combine of the n-gram hashes from a per-band start, finished with splitmix64;
    a compiled loop, :func:`pipeline._kernels.lsh_band_keys`)."""
    from pipeline._kernels import lsh_band_keys

    if sig.shape[1] < bands * rows:
        raise ValueError(f"band_keys: {bands} bands x {rows} rows need {bands * rows} signature slots, not {sig.shape[1]}")
    with np.errstate(over="ignore"):
        start = mix64(np.arange(bands, dtype=np.uint64) + np.uint64(seed))
    return lsh_band_keys(np.ascontiguousarray(sig), int(bands), int(rows), start)
