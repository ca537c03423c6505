"""What row-level progress reporting costs LM scoring: the same perplexity pass with and without a
progress sink, alternated, best and median of ``--repeats``.

    .venv/bin/python benchmarks/progress_overhead.py [--rows 96] [--repeats 5] [--max-tokens 256]

Real rows: Code Alpaca (``shared/data/real/code_alpaca_2k.json.gz``), SmolLM2-135M-Instruct (GGUF,
float32 on CPU), cache off, ``max_batch_size`` 4 (many batches, so many progress reports). With a
sink, every batch advances the task and the sink (the local engine's terminal bars, drawn to
/dev/null) is called at most every 0.5 s, as in a run. Prints seconds per pass and the overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import progress  # noqa: E402
from pipeline.io.readers import read_table  # noqa: E402
from pipeline.schema import with_decision  # noqa: E402
from pipeline.scoring.stages import Perplexity  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    rows, _ = read_table(str(REAL / "code_alpaca_2k.json.gz"))
    rows = with_decision(rows.head(args.rows))  # as a run hands rows to a stage: with keep/drop_reason
    st = Perplexity(max_tokens=args.max_tokens, max_batch_size=4, cache=False, device="cpu")
    st.setup()
    st.score(rows.head(8))  # warm-up: model loaded, kernels initialised
    times: dict[str, list[float]] = {"off": [], "on": []}
    devnull = open(os.devnull, "w")  # noqa: SIM115
    for _ in range(args.repeats):
        for mode in ("off", "on"):
            t0 = time.perf_counter()
            if mode == "on":
                bars = progress.TerminalBars()
                stderr, sys.stderr = sys.stderr, devnull
                try:
                    with progress.sink(bars, interval=0.5):
                        st.score(rows)
                finally:
                    bars.close()
                    sys.stderr = stderr
            else:
                st.score(rows)
            times[mode].append(time.perf_counter() - t0)
    load = os.getloadavg()
    print(f"rows {args.rows}, repeats {args.repeats}, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    for mode in ("off", "on"):
        t = times[mode]
        print(f"  progress {mode:>3}: best {min(t):.2f}s  median {statistics.median(t):.2f}s  "
              f"({args.rows / min(t):.1f} rows/s)")
    print(f"  overhead: best {100 * (min(times['on']) / min(times['off']) - 1):+.2f}%  "
          f"median {100 * (statistics.median(times['on']) / statistics.median(times['off']) - 1):+.2f}%")


if __name__ == "__main__":
    main()
