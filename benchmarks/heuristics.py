"""Heuristics benchmark: throughput of the ``heuristics`` stage on real data (the project's own figures).

**Data.** Real files from ``--real`` (default ``../shared/data/real``), each its own row of the table:
``sharegpt_17k.parquet`` (multi-turn, long responses), ``t0_templated_50k.parquet`` (short templated
completions), ``code_alpaca_2k.json.gz`` (code) and ``gsm8k_train.jsonl.gz`` (math solutions). Each
file is read with ``pipeline.io.readers.read_table`` and given ``keep=True`` / ``drop_reason=None`` as
the runner does; reading is not timed. The response text is ``text_expr("response")`` (all assistant
turns joined); MB are its UTF-8 bytes (10^6 bytes) and words its ``\\S+`` matches, both counted
outside the timed region.

**Ours.** ``Heuristics()`` with its default parameters: ``setup()``, one warm-up ``decide(score(...))``
on 100 rows (the stage's compiled numba kernels are cached on disk; the first call loads them), then
``decide(score(df))`` over the whole file ``--repeat`` times; the fastest run is shown. Each file runs
in a fresh subprocess; peak RSS is its high-water mark (VmHWM), including the file read.

**Peer.** datatrove's Gopher filters as a datatrove pipeline, in datatrove's own virtualenv and timed
end to end as a user runs them, beside ``curate run`` and ``heuristics(table)``:
``benchmarks/peers/run.py heuristics`` (datatrove 0.10 cannot run in the project's venv: its xxhash
pin differs, and it needs spaCy).

    .venv/bin/python benchmarks/heuristics.py [--real ../shared/data/real] [--repeat 2] [--files sharegpt_17k.parquet,...]
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
    """UTF-8 MB of the instruction text (read by the stage's echo check)."""
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
    ap.add_argument("--child")
    ap.add_argument("--file")
    args = ap.parse_args()
    if args.child:
        res = child_ours(args.file, args.repeat)
        print(json.dumps(res, default=str))
        return
    real = Path(args.real)
    load1 = os.getloadavg()[0]
    import polars as pl

    print(f"heuristics throughput: {os.cpu_count()} CPUs, load average {load1:.2f} at start, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}, Python {platform.python_version()}, "
          f"polars {pl.__version__}")
    print(f"best of {args.repeat} (score+decide, after a 100-row warm-up); each file in a fresh subprocess")
    header = (f"{'file':<26} {'rows':>8} {'tool':<40} {'seconds':>8} {'rows/s':>10} {'MB/s':>8} "
              f"{'words/s':>12} {'peak RSS MB':>12}")
    print(header)
    print("-" * len(header))
    for name in args.files.split(","):
        path = str(real / name)
        r = _spawn("--child", "ours", "--file", path, "--repeat", str(args.repeat))
        print(_line(name, f"{r['rows']:,}", "sft-curate Heuristics", r["seconds"], r["rows"], r["mb"], r["words"],
                    r["peak_rss_mb"]), flush=True)
        print(f"{'':<26} {'':>8}   score {r['score_s']:.2f}s, decide {r['decide_s']:.3f}s; {r['mb']:.1f} MB, "
              f"{r['words']:,} words of responses ({r['instruction_mb']:.1f} MB of instructions, "
              f"read by the echo check only); dropped {r['dropped']:,}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
