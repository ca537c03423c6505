"""Throughput of the LM scorers on CPU (the project's own figures).

    .venv/bin/python benchmarks/scoring.py [--rows 64] [--max-tokens 512]

Real rows: Code Alpaca (``shared/data/real/code_alpaca_2k.json.gz``, first ``--rows`` rows), scored
with SmolLM2-135M-Instruct (GGUF, float32 on CPU). Prints, per scorer (cache off): rows/s,
tokens/s (context + target tokens through the model), padding waste of the packed batches, and the
process's peak RSS after it.

The comparison with a peer (a length-sorted bare transformers loop in its own virtualenv) is the
peer harness's: ``benchmarks/peers/run.py lm``. The in-process comparison this script used to print
(against a loop over the pipeline's own packed batches and a per-sample loop) was withdrawn from
``benchmarks/RESULTS.md`` (issue 19) and is gone.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from pipeline.io.readers import read_table  # noqa: E402
from pipeline.scoring import backend as backends  # noqa: E402
from pipeline.scoring.stages import IFD, Deita, ErrorUncertainty, Grape, Judge, Perplexity  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=512)
    args = ap.parse_args()
    import torch

    rows, _ = read_table(str(REAL / "code_alpaca_2k.json.gz"))
    rows = rows.head(args.rows)
    t0 = time.perf_counter()
    probe = Perplexity(max_tokens=args.max_tokens)
    backend = backends.acquire(probe.backend_spec())
    print(f"# SmolLM2-135M-Instruct GGUF -> float32 on {backend.info()['device']}, torch threads "
          f"{torch.get_num_threads()}, load {time.perf_counter() - t0:.1f}s, {rows.height} Code Alpaca rows, "
          f"max_tokens {args.max_tokens}, token_budget {backend.token_budget}")
    print(f"\n{'scorer':<18} {'passes':>6} {'rows/s':>8} {'tokens/s':>9} {'padding':>8} {'seconds':>8} {'peak RSS MB':>12}")
    for cls in (Perplexity, IFD, Deita, Judge, Grape, ErrorUncertainty):
        st = cls(max_tokens=args.max_tokens, cache=False)
        t0 = time.perf_counter()
        st(rows)
        dt = time.perf_counter() - t0
        b = st.summary().get("backend", {})
        passes = {"ifd": 2, "deita": 2}.get(st.name, 1)
        waste = 1 - b["real_tokens"] / b["padded_tokens"] if b.get("padded_tokens") else float("nan")
        print(f"{st.name:<18} {passes:>6} {rows.height / dt:>8.2f} {b.get('real_tokens', 0) / dt:>9.0f} "
              f"{waste:>8.1%} {dt:>8.1f} {rss_mb():>12.0f}")
        st.teardown()

    print(f"\npeak RSS {rss_mb():.0f} MB; polars {pl.__version__}, torch {torch.__version__}")
    backends.release(backend)


if __name__ == "__main__":
    main()
