"""The peer harness's corpora: real documents with planted near-copies and their truth.

Documents are real text from ``../shared/data/real`` (every message of ShareGPT, AlpacaEval,
T0, GPTeacher, Code Alpaca and GSM8K with at least 40 words; texts over 90 words are cut into
consecutive 60-word documents), exact duplicates removed after whitespace folding, then every
document that has a natural near-duplicate among the others (word 5-gram Jaccard >= 0.5 on a
dense 20x5 LSH, all pairs of each bucket checked exactly; buckets of more than 64 documents,
template boilerplate, are dropped whole) is removed, so that the only near-duplicates are the
planted ones and a removal outside a planted pair is a false removal. A corpus of
``n`` rows draws ``n - n * copies`` documents (seeded) and plants ``n * copies`` near-copies of
other drawn documents, each with ``edit`` of its words edited (at least one: a word replaced by a
word of another document, deleted, or a word inserted), then shuffles the rows.

Written to ``DIR/docs_{n}.parquet`` with ``row`` (0..n-1, the file order), ``text`` and ``group``
(the planted pair's id on both the original and its copy; -1 elsewhere).

    python benchmarks/peers/corpus.py --sizes 100000,300000 --out /tmp/peers-data
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
FILES = ["sharegpt_17k.parquet", "alpaca_eval_judged.parquet", "alpaca_eval_reference.parquet",
         "t0_templated_50k.parquet", "gpteacher_roleplay.json.gz", "gpteacher_codegen.json.gz",
         "gpteacher_toolformer_dedupe_only.json.gz", "new_codealpaca.json.gz", "code_alpaca_2k.json.gz",
         "gsm8k_train.jsonl.gz", "gsm8k_test.jsonl.gz"]
MIN_WORDS, CUT_OVER, CHUNK = 40, 90, 60


def real_texts() -> list[str]:
    """Every message text of the real files (read with the project's own reader: all formats)."""
    import polars as pl

    from pipeline.io.readers import read_table

    out: list[str] = []
    for f in FILES:
        df, _ = read_table(str(REAL / f))
        s = df.select(pl.col("messages").list.eval(pl.element().struct.field("content")).alias("c")).explode("c")["c"]
        out += s.drop_nulls().to_list()
    return out


def documents(min_words: int = MIN_WORDS, cut_over: int = CUT_OVER, chunk: int = CHUNK) -> list[str]:
    """Real documents of ``min_words``+ words (texts over ``cut_over`` words cut into ``chunk``-word
    pieces), exact duplicates removed."""
    seen: set[str] = set()
    docs: list[str] = []
    for t in real_texts():
        words = t.split()
        if len(words) < min_words:
            continue
        pieces = [words] if len(words) <= cut_over else [words[i:i + chunk] for i in range(0, len(words), chunk)]
        for p in pieces:
            if len(p) < min_words:
                continue
            d = " ".join(p)
            if d not in seen:
                seen.add(d)
                docs.append(d)
    return docs


def without_near_duplicates(docs: list[str], threshold: float = 0.5, bands: int = 20, rows: int = 5,
                            max_bucket: int = 64) -> list[str]:
    """``docs`` less every document with a near-duplicate among them (see the module docstring)."""
    import polars as pl

    from pipeline._kernels import pair_jaccard
    from pipeline.dedup import band_keys, minhash_signatures, shingle_hashes

    flat, off = shingle_hashes(pl.Series(docs), 5)
    keys = band_keys(minhash_signatures(flat, off, bands * rows, 7), bands, rows)
    bad = np.zeros(len(docs), dtype=bool)
    pairs = []
    node = np.arange(len(docs), dtype=np.int64)
    for j in range(bands):
        fr = pl.DataFrame({"node": node, "key": keys[:, j]})
        size = fr.group_by("key").len()
        big = fr.join(size.filter(pl.col("len") > max_bucket), on="key", how="semi")["node"].to_numpy()
        bad[big] = True
        small = fr.join(size.filter((pl.col("len") > 1) & (pl.col("len") <= max_bucket)), on="key", how="semi")
        pr = small.join(small, on="key").filter(pl.col("node") < pl.col("node_right"))
        pairs.append(pr.select("node", "node_right"))
    pr = pl.concat(pairs).unique()
    a, b = pr["node"].to_numpy(), pr["node_right"].to_numpy()
    vals = (flat & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    jac = pair_jaccard(vals, off, a, vals, off, b)
    near = jac >= threshold
    bad[a[near]] = True
    bad[b[near]] = True
    return [d for d, x in zip(docs, bad, strict=True) if not x]


def edit(doc: str, frac: float, rng: np.random.Generator, vocab: list[str]) -> str:
    words = doc.split(" ")
    k = max(1, int(round(frac * len(words))))
    for _ in range(k):
        op = rng.integers(3)
        i = int(rng.integers(len(words)))
        if op == 0:
            words[i] = vocab[int(rng.integers(len(vocab)))]
        elif op == 1 and len(words) > 2:
            del words[i]
        else:
            words.insert(i, vocab[int(rng.integers(len(vocab)))])
    return " ".join(words)


def reformat(doc: str, frac: float, rng: np.random.Generator, vocab: list[str]) -> str:  # noqa: ARG001
    """A formatting-only copy: ``frac`` of the words (at least one) get their case changed, a
    punctuation mark appended or removed, or the space after them doubled or made a line break. The
    copy equals its original after lower-casing and folding punctuation and white space (the exact
    dedup corpus's truth); its bytes differ."""
    words = doc.split(" ")
    for _ in range(max(1, int(round(frac * len(words))))):
        i = int(rng.integers(len(words)))
        w, op = words[i], int(rng.integers(4))
        if op == 0:
            words[i] = w.upper() if w.islower() else w.lower()
        elif op == 1:
            words[i] = w + ",.;:!?"[int(rng.integers(6))]
        elif op == 2 and len(w) > 1 and not w[-1].isalnum():
            words[i] = w[:-1]
        else:
            words[i] = w + ("\n" if rng.integers(2) else " ")
    return " ".join(words)


def build(n: int, docs: list[str], copies: float = 0.05, frac: float = 0.01, seed: int = 0,
          copy=edit) -> pa.Table:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    n_copy = int(n * copies)
    n_base = n - n_copy
    base = [docs[i] for i in rng.choice(len(docs), min(n_base, len(docs)), replace=False)]
    vocab = re.findall(r"[A-Za-z]{3,12}", " ".join(base[:2000]))
    if n_base > len(docs):
        # more documents than the real data holds: the rest are real documents with half of their
        # words edited (5-gram Jaccard to their original ~0.1, far from any threshold), each from
        # another original (benchmarks/dedup.py's pool grows the same way)
        extra = n_base - len(docs)
        if extra > len(docs):
            raise SystemExit(f"only {len(docs):,} real documents, {n_base:,} needed (at most twice as many)")
        base += [edit(docs[i], 0.5, rng, vocab) for i in rng.choice(len(docs), extra, replace=False)]
    orig = rng.choice(n_base, n_copy, replace=False)
    texts = base + [copy(base[i], frac, rng, vocab) for i in orig]
    group = np.full(n, -1, dtype=np.int64)
    group[orig] = np.arange(n_copy)
    group[n_base:] = np.arange(n_copy)
    order = rng.permutation(n)
    return pa.table({"row": np.arange(n, dtype=np.int64), "text": [texts[i] for i in order], "group": group[order]})


INSTRUCTION_FILES = ["gpteacher_toolformer_dedupe_only.json.gz", "gpteacher_codegen.json.gz", "new_codealpaca.json.gz",
                     "code_alpaca_2k.json.gz", "gpteacher_roleplay.json.gz"]


def instructions(n: int, out: Path) -> Path:
    """The SemDeDup corpus: the first user turns of real instruction sets (GPTeacher toolformer, whose
    authors similarity-deduplicated it at 0.6-0.9 and ship the sets, then code and roleplay sets;
    semantic near-duplicates occur naturally), ``n`` of them drawn (seeded), written to ``instr_{n}.parquet``."""
    import polars as pl

    from pipeline.io.readers import read_table

    texts: list[str] = []
    for f in INSTRUCTION_FILES:
        df, _ = read_table(str(REAL / f))
        texts += df.select(pl.col("messages").list.first().struct.field("content"))["content"].to_list()
    texts = [t for t in texts if t and t.strip()]
    texts = [texts[i] for i in np.random.default_rng(0).permutation(len(texts))[:n]]
    path = out / f"instr_{n}.parquet"
    pq.write_table(pa.table({"row": np.arange(len(texts), dtype=np.int64), "text": texts}), path)
    return path


LM_FILES = ["code_alpaca_2k.json.gz", "gsm8k_train.jsonl.gz", "alpaca_eval_reference.parquet", "gpteacher_roleplay.json.gz"]


def lm_rows(n: int, out: Path, max_words: int = 400) -> Path:
    """The LM-scoring corpus: ``n`` real single-turn instruction/response pairs (Code Alpaca, GSM8K,
    AlpacaEval references, GPTeacher roleplay) of at most ``max_words`` words in all, drawn (seeded),
    written to ``lm_{n}.parquet`` (``row``, ``instruction``, ``response``)."""
    import polars as pl

    from pipeline.io.readers import read_table

    parts = []
    for f in LM_FILES:
        df, _ = read_table(str(REAL / f))
        parts.append(df.filter(pl.col("messages").list.len() == 2).select(
            pl.col("messages").list.first().struct.field("content").alias("instruction"),
            pl.col("messages").list.last().struct.field("content").alias("response")))
    pool = pl.concat(parts).filter(
        (pl.col("instruction").str.split(" ").list.len() + pl.col("response").str.split(" ").list.len()) <= max_words)
    pool = pool[np.random.default_rng(0).permutation(pool.height)[:n].tolist()]
    path = out / f"lm_{n}.parquet"
    pool.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64)).write_parquet(path)
    return path


HEURISTICS_FILES = ["sharegpt_17k.parquet", "t0_templated_50k.parquet"]


def heuristics_inputs(out: Path) -> list[Path]:
    """The heuristics corpus: each real file of ``HEURISTICS_FILES`` as it is
    (``heur_{stem}.project.parquet``, what the project reads) and as one document per row, the row's
    assistant turns joined by a blank line (``heur_{stem}.parquet``: ``row``, ``text``; what
    datatrove's filters read)."""
    import shutil

    import polars as pl

    from pipeline.io.readers import read_table
    from pipeline.text import text_expr

    paths = []
    for f in HEURISTICS_FILES:
        stem = f.split(".")[0]
        shutil.copyfile(REAL / f, out / f"heur_{stem}.project.parquet")
        df, _ = read_table(str(REAL / f))
        df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
                  text_expr("response").fill_null("").alias("text")).write_parquet(out / f"heur_{stem}.parquet")
        paths.append(out / f"heur_{stem}.parquet")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000")
    ap.add_argument("--out", default="/tmp/peers-data")
    ap.add_argument("--copies", type=float, default=0.05, help="share of rows that are planted copies")
    ap.add_argument("--edit", type=float, default=0.01, help="share of a copy's words edited")
    ap.add_argument("--natural", action="store_true",
                    help="keep the real data's own near-duplicates (files docs_{n}_natural.*): the corpus for "
                         "comparing how tools treat chains of near-duplicates")
    ap.add_argument("--long", action="store_true",
                    help="documents of 80-150 words (longer texts cut into 100-word pieces; files docs_{n}_long.*): "
                         "one edit in 1%% of the words leaves a copy at Jaccard ~0.9, where the shared 10x12 LSH "
                         "finds ~95%% of the pairs")
    ap.add_argument("--exact", action="store_true",
                    help="plant formatting-only copies instead (case, punctuation, white space; files exact_{n}.*): "
                         "the exact-dedup corpus")
    ap.add_argument("--heuristics", action="store_true", help="write only the heuristics corpus (heur_*)")
    ap.add_argument("--lm", type=int, help="write only the LM-scoring corpus of this many instruction/response pairs")
    ap.add_argument("--instructions", type=int, help="write only the SemDeDup corpus of this many instructions")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.heuristics:
        print(*heuristics_inputs(out), sep="\n")
        return
    if a.lm:
        print(lm_rows(a.lm, out))
        return
    if a.instructions:
        print(instructions(a.instructions, out))
        return
    docs = documents(80, 150, 100) if a.long else documents()
    tag = ("_natural" if a.natural else "") + ("_long" if a.long else "")
    stem = "exact" if a.exact else "docs"
    if not a.natural:
        clean = without_near_duplicates(docs)
        print(f"{len(docs):,} real documents, {len(clean):,} without a near-duplicate among them")
        docs = clean
    for n in (int(x) for x in a.sizes.split(",")):
        t = build(n, docs, a.copies, a.edit if not a.exact else 0.03, copy=reformat if a.exact else edit)
        pq.write_table(t, out / f"{stem}_{n}{tag}.parquet")
        # the project reads the same texts as single-turn prompt/completion rows; dedup key: response
        proj = pa.table({"prompt": pa.array([f"doc {i}" for i in range(n)]), "completion": t["text"]})
        pq.write_table(proj, out / f"{stem}_{n}{tag}.project.parquet")
        print(f"{n:,} rows -> {out}/{stem}_{n}{tag}.parquet ({int((t['group'].to_numpy() >= 0).sum()) // 2:,} planted pairs)")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main()
