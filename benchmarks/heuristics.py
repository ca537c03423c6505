"""Heuristics benchmark: throughput of the ``heuristics`` stage beside datatrove's Gopher filters, on real data.

**Data.** Real files from ``--real`` (default ``../shared/data/real``), each its own row of the table:
``sharegpt_17k.parquet`` (multi-turn, long responses), ``t0_templated_50k.parquet`` (short templated
completions), ``code_alpaca_2k.json.gz`` (code) and ``gsm8k_train.jsonl.gz`` (math solutions). Each
file is read with ``pipeline.io.readers.read_table`` and given ``keep=True`` / ``drop_reason=None`` as
the runner does; reading is not timed. The response text is ``text_expr("response")`` (all assistant
turns joined); MB are its UTF-8 bytes (10^6 bytes) and words its ``\\S+`` matches, both counted
outside the timed region.

**Ours.** ``Heuristics()`` with its default parameters: ``setup()``, one warm-up ``decide(score(...))``
on 100 rows (the stage's compiled numba kernels are cached on disk; the first call loads them), then
``decide(score(df))`` over the whole file ``--repeat`` times; the fastest run is shown.

**Peer.** datatrove's ``GopherRepetitionFilter`` and ``GopherQualityFilter`` (default thresholds,
English) on the same responses: one ``Document`` per row with ``text`` = the response, then each
filter's ``filter(doc)`` over all documents (one pass per filter, after a warm-up on a few documents
that loads the tokenizer; the tokenizer's small LRU cache is cleared before each pass), then both
chained as a datatrove pipeline runs them (``Repetition -> Quality``: a document the first drops is not
passed to the second, and the second reuses the first's words from that cache); the chained pass is
the peer's figure for the speed-up. Document construction is timed separately and is not counted.
Both filters split words with datatrove's word tokenizer, which for English is spaCy's rule-based
``spacy.blank("en")``: no model download, it runs offline, but it needs the ``spacy`` package, which
``pip install datatrove`` does not install. Without spaCy neither filter runs (``ImportError: Please install spacy``), so with
``--peer-tokenizer auto`` (default) the script then passes datatrove a regex tokenizer
(``\\w+|[^\\w\\s]+``, close to spaCy's split of punctuation) and says so in the output; that is faster
than spaCy, so the peer's figure is then an upper bound on its real throughput. The peer is pure
Python and slow on long chats: it runs on at most ``--peer-rows`` rows per file (sampled with a fixed
seed), and its per-row, MB and word rates are those of the sample (marked ``*``). It runs once.

**Not the same rules.** The peer computes Gopher's rules: duplicate line/paragraph fractions, top
2..4-gram and duplicate 5..10-gram character fractions (repetition); word count, mean word length,
symbol/bullet/ellipsis ratios, alphabetic-word share, stop words (quality); each filter returns at the
first failing rule, so documents dropped early cost less. Ours computes one word n-gram repetition
ratio (n=3), empty response, response echoes the instruction, non-alphanumeric character ratio and
ends-with-user, vectorised over the whole file. The comparison is of per-document heuristic
throughput, not of identical outputs. Ours and the peer run in separate fresh subprocesses; peak RSS
is that subprocess's high-water mark (VmHWM), including the file read.

    .venv/bin/python benchmarks/heuristics.py [--real ../shared/data/real] [--repeat 2] [--peer-rows 5000]
        [--files sharegpt_17k.parquet,...] [--peer-tokenizer auto|spacy|regex] [--skip-peer]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from _common import peak_rss_mb, spawn  # benchmarks/ is on sys.path (the script's folder)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


FILES = ["sharegpt_17k.parquet", "t0_templated_50k.parquet", "code_alpaca_2k.json.gz", "gsm8k_train.jsonl.gz"]
SEED = 0


def load(path: str):  # -> pl.DataFrame
    """The file as the runner holds it: canonical rows plus ``keep`` / ``drop_reason``."""
    import polars as pl

    from pipeline.io.readers import read_table

    rows, _ = read_table(path)
    return rows.with_columns(pl.lit(True).alias("keep"), pl.lit(None, pl.String).alias("drop_reason"))


def response_stats(df) -> tuple[float, int]:  # noqa: ANN001
    """UTF-8 MB and whitespace words of the response text (not timed)."""
    from pipeline.text import text_expr

    r = text_expr("response").fill_null("")
    mb, words = df.select((r.str.len_bytes().sum() / 1e6).alias("mb"), r.str.count_matches(r"\S+").sum().alias("w")).row(0)
    return float(mb), int(words)


def instruction_mb(df) -> float:  # noqa: ANN001
    """UTF-8 MB of the instruction text: ours also reads it (the echo check), the peer does not."""
    from pipeline.text import text_expr

    return float(df.select(text_expr("instruction").fill_null("").str.len_bytes().sum()).item()) / 1e6


# ---------------------------------------------------------------- children (one measured case each)


def child_ours(path: str, repeat: int) -> dict:
    from pipeline.stages.heuristic_filter import Heuristics

    df = load(path)
    mb, words = response_stats(df)
    imb = instruction_mb(df)
    h = Heuristics()
    h.setup()
    h.decide(h.score(df.head(100)))  # warm-up: loads the cached numba kernels
    best = None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        s = h.score(df)
        t1 = time.perf_counter()
        out = h.decide(s)
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0] + best[1]:
            best = (t1 - t0, t2 - t1, out)
    score_s, decide_s, out = best
    dropped = int((~out["keep"]).sum())
    return {"rows": df.height, "sample": df.height, "seconds": score_s + decide_s, "score_s": score_s,
            "decide_s": decide_s, "mb": mb, "words": words, "instruction_mb": imb, "dropped": dropped, "peak_rss_mb": peak_rss_mb()}


def child_peer(path: str, peer_rows: int, tokenizer: str) -> dict:
    try:
        from datatrove.data import Document
        from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
        from datatrove.utils.text import split_into_parts
        from datatrove.utils.word_tokenizers import WordTokenizer
    except ImportError as e:
        return {"skipped": f"datatrove not installed: peer skipped ({e})"}
    import importlib.metadata
    import importlib.util

    import regex

    from pipeline.text import text_expr

    if tokenizer == "auto":
        tokenizer = "spacy" if importlib.util.find_spec("spacy") else "regex"
    if tokenizer == "spacy":
        language, tok_label = "eng", "spaCy blank 'en' (datatrove's default for English)"
    else:
        word_re = regex.compile(r"\w+|[^\w\s]+")

        class RegexWordTokenizer(WordTokenizer):
            """Stand-in for spaCy's rule-based split: words and runs of punctuation."""

            def word_tokenize(self, text: str) -> list[str]:
                return word_re.findall(text)

            def sent_tokenize(self, text: str) -> list[str]:  # not used by the Gopher filters
                return [text]

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                return [(0, len(text))]

        language = RegexWordTokenizer("en")
        tok_label = r"regex \w+|[^\w\s]+ (spaCy not installed; datatrove's English default needs it)"
    df = load(path)
    total = df.height
    if df.height > peer_rows:
        df = df.sample(peer_rows, seed=SEED)
    mb, words = response_stats(df)
    texts = df.select(text_expr("response").fill_null(""))[:, 0].to_list()
    ids = df["id"].to_list()
    t0 = time.perf_counter()
    docs = [Document(text=t, id=str(i)) for t, i in zip(texts, ids, strict=True)]
    build_s = time.perf_counter() - t0
    res = {"rows": total, "sample": len(docs), "mb": mb, "words": words, "build_s": build_s,
           "version": importlib.metadata.version("datatrove"), "tokenizer": tok_label, "filters": {}}

    def kept(r: bool | tuple[bool, str]) -> bool:
        return r is True or (isinstance(r, tuple) and bool(r[0]))

    rep, qual = GopherRepetitionFilter(language=language), GopherQualityFilter(language=language)
    for name, f in [("GopherRepetitionFilter", rep), ("GopherQualityFilter", qual)]:
        for d in docs[:5]:  # warm-up: loads the tokenizer
            f.filter(d)
        split_into_parts.cache_clear()
        t = time.perf_counter()
        results = [f.filter(d) for d in docs]
        dt = time.perf_counter() - t
        res["filters"][name] = {"seconds": dt, "dropped": sum(not kept(r) for r in results)}
    # both, as a datatrove pipeline runs them: a document the first drops never reaches the second, and the
    # second finds the words of the same text in split_into_parts' LRU cache
    split_into_parts.cache_clear()
    t = time.perf_counter()
    n_kept = sum(1 for d in docs if kept(rep.filter(d)) and kept(qual.filter(d)))
    res["filters"]["Repetition -> Quality"] = {"seconds": time.perf_counter() - t, "dropped": len(docs) - n_kept}
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def _spawn(*args: str) -> dict:
    return spawn(__file__, *args)


# ---------------------------------------------------------------- driver


def _line(file: str, rows: str, tool: str, seconds: float, n: int, mb: float, words: int, rss: float | str) -> str:
    rss_s = f"{rss:>12,.0f}" if isinstance(rss, float) else f"{rss:>12}"
    return (f"{file:<26} {rows:>8} {tool:<40} {seconds:>8.2f} {n / seconds:>10,.0f} {mb / seconds:>8.2f} "
            f"{words / seconds:>12,.0f} {rss_s}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "real"))
    ap.add_argument("--files", default=",".join(FILES))
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of ours per file; the fastest is shown")
    ap.add_argument("--peer-rows", type=int, default=5000, help="the peer runs on at most this many rows per file")
    ap.add_argument("--peer-tokenizer", choices=["auto", "spacy", "regex"], default="auto")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--child")
    ap.add_argument("--file")
    args = ap.parse_args()
    if args.child:
        res = (child_peer(args.file, args.peer_rows, args.peer_tokenizer) if args.child == "peer"
               else child_ours(args.file, args.repeat))
        print(json.dumps(res, default=str))
        return
    real = Path(args.real)
    load1 = os.getloadavg()[0]
    import polars as pl

    print(f"heuristics throughput: {os.cpu_count()} CPUs, load average {load1:.2f} at start, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}, Python {platform.python_version()}, "
          f"polars {pl.__version__}")
    print(f"ours: best of {args.repeat} (score+decide, after a 100-row warm-up); peer: one pass per filter "
          f"on at most {args.peer_rows:,} rows per file (seed {SEED}); each case in a fresh subprocess")
    header = (f"{'file':<26} {'rows':>8} {'tool':<40} {'seconds':>8} {'rows/s':>10} {'MB/s':>8} "
              f"{'words/s':>12} {'peak RSS MB':>12}")
    print(header)
    print("-" * len(header))
    notes: list[str] = []
    peer_said = False
    for name in args.files.split(","):
        path = str(real / name)
        r = _spawn("--child", "ours", "--file", path, "--repeat", str(args.repeat))
        print(_line(name, f"{r['rows']:,}", "sft-curate Heuristics", r["seconds"], r["rows"], r["mb"], r["words"],
                    r["peak_rss_mb"]), flush=True)
        print(f"{'':<26} {'':>8}   score {r['score_s']:.2f}s, decide {r['decide_s']:.3f}s; {r['mb']:.1f} MB, "
              f"{r['words']:,} words of responses ({r['instruction_mb']:.1f} MB of instructions, "
              f"read by the echo check only); dropped {r['dropped']:,}", flush=True)
        if args.skip_peer:
            continue
        p = _spawn("--child", "peer", "--file", path, "--peer-rows", str(args.peer_rows),
                   "--peer-tokenizer", args.peer_tokenizer)
        if "skipped" in p:
            print(f"{'':<26} {'':>8}   datatrove not installed: peer skipped", flush=True)
            continue
        if not peer_said:
            notes.append(f"peer: datatrove {p['version']}; word tokenizer: {p['tokenizer']}")
            peer_said = True
        star = "*" if p["sample"] < p["rows"] else ""
        rows_s = f"{p['sample']:,}{star}"
        fs = p["filters"]
        chain = "Repetition -> Quality"
        for fname, f in fs.items():
            print(_line("", rows_s, f"datatrove {fname}", f["seconds"], p["sample"], p["mb"], p["words"],
                        p["peak_rss_mb"] if fname == chain else ""), flush=True)
        both = fs[chain]["seconds"]
        print(f"{'':<26} {'':>8}   Document construction {p['build_s']:.3f}s (not counted); dropped: "
              + ", ".join(f"{k.replace('Filter', '')} {v['dropped']:,}" for k, v in fs.items())
              + f"; {p['mb']:.1f} MB, {p['words']:,} words; ours is "
              f"{(r['rows'] / r['seconds']) / (p['sample'] / both):,.0f}x the peer's rows/s (chained)",
              flush=True)
    if peer_said:
        notes.append("* peer rows: a seeded sample of --peer-rows rows of the file; its rates are the sample's")
        notes.append("the rules differ (see the module docstring): per-document heuristic throughput, not identical "
                     "outputs")
    for n in notes:
        print(n)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
