"""How well does each LM score separate good responses from bad ones, on real graded data?

    .venv/bin/python benchmarks/score_quality.py [--gsm-questions 50] [--alpaca-instructions 40]
        [--model smollm2] [--max-tokens 384] [--cache-dir /tmp/sft-curate-score-quality]

* GSM8K (``gsm8k_model_solutions.jsonl.gz``): GPT-3 6B/175B solutions to GSM8K test questions,
  each graded ``is_correct``. For a sample of questions, all four solutions become rows; the table
  gives each score's AUROC for ``is_correct`` (0.5 = chance), oriented so that the direction the
  method treats as "better" is positive (lower perplexity / NLL / entropy / IFD, higher Deita,
  judge P(yes), GRAPE log-likelihood). GRAPE's own use is also reported: picking, per question, the
  solution with the highest length-normalised log-likelihood, against the mean accuracy of a
  random pick.
* AlpacaEval (``alpaca_eval_judged.parquet``): responses of 33 models to the same instructions,
  judged by GPT-4-turbo against a reference (``preference``: 1 = reference better, 2 = model
  better). For a sample of instructions, four random models' responses each; the table gives the
  Spearman correlation of each score with ``preference`` (per response) and with the model's
  ``model_win_rate``.

Response length (characters) is included as the trivial baseline ("Long Is More"). Intervals are
95% bootstrap intervals over rows (1000 resamples). Scores are cached under ``--cache-dir``, so a
rerun (or a run with more rows) only scores what is new. The default SmolLM2-135M is a very weak
judge; this script is the yardstick for larger models (``--model /path/to/model``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from scipy.stats import ConstantInputWarning, rankdata, spearmanr  # noqa: E402

from pipeline.schema import message_id  # noqa: E402
from pipeline.scoring.stages import IFD, Deita, ErrorUncertainty, Grape, Judge, Perplexity  # noqa: E402
from pipeline.stages.base import RunContext  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
warnings.simplefilter("ignore", ConstantInputWarning)  # a bootstrap resample can be constant
SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")

#: (column, sign): sign +1 when higher = better by the method's own reading
SCORES: list[tuple[str, int]] = [
    ("ppl", -1), ("eu_nll", -1), ("eu_entropy", -1), ("grape_loglik", +1), ("ifd", -1),
    ("deita_complexity", +1), ("deita_quality", +1), ("deita_score", +1), ("judge_yes_prob", +1),
    ("len_chars", +1),
]


def canonical(pairs: list[tuple[str, str]], source: str, meta: list[dict]) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    return pl.DataFrame({
        "id": [message_id(m) for m in msgs],
        "source": [source] * len(msgs),
        "source_row": list(range(len(msgs))),
        "messages": msgs,
        "meta": [json.dumps(m) for m in meta],
    })


def gsm_rows(n_questions: int, seed: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    with gzip.open(REAL / "gsm8k_model_solutions.jsonl.gz", "rt") as f:
        recs = [json.loads(line) for line in f]
    pick = np.random.default_rng(seed).choice(len(recs), size=min(n_questions, len(recs)), replace=False)
    pairs, meta, correct, qid = [], [], [], []
    for q in pick:
        r = recs[int(q)]
        for s in SOLVERS:
            pairs.append((r["question"], r[s]["solution"]))
            meta.append({"solver": s})
            correct.append(bool(r[s]["is_correct"]))
            qid.append(int(q))
    return canonical(pairs, "gsm8k_model_solutions", meta), np.array(correct), np.array(qid)


def alpaca_rows(n_instructions: int, per: int, seed: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    df = pl.read_parquet(REAL / "alpaca_eval_judged.parquet").filter(pl.col("preference").is_not_null())
    rng = np.random.default_rng(seed)
    inst = df["instruction"].unique().sort().to_list()
    chosen = set(rng.choice(len(inst), size=min(n_instructions, len(inst)), replace=False).tolist())
    sub = df.filter(pl.col("instruction").is_in([inst[i] for i in chosen]))
    sub = sub.with_columns(pl.Series("_r", rng.random(sub.height))).sort(["instruction", "_r"])
    sub = sub.group_by("instruction", maintain_order=True).head(per)
    rows = canonical(list(zip(sub["instruction"].to_list(), sub["output"].to_list(), strict=True)),
                     "alpaca_eval_judged", [{"model": m} for m in sub["model"].to_list()])
    return rows, sub["preference"].to_numpy(), sub["model_win_rate"].to_numpy()


def score_all(rows: pl.DataFrame, args: argparse.Namespace, ctx: RunContext) -> tuple[pl.DataFrame, dict]:
    kw = {"model": args.model, "max_tokens": args.max_tokens}
    out = rows
    seconds = {}
    for cls in (Perplexity, ErrorUncertainty, IFD, Deita, Judge, Grape):
        st = cls(**kw, **({"drop_non_best": False} if cls is Grape else {}))
        t0 = time.perf_counter()
        out = st(out, ctx)
        seconds[st.name] = time.perf_counter() - t0
        st.teardown()
    out = out.with_columns(pl.col("messages").list.last().struct.field("content").str.len_chars()
                           .cast(pl.Float64).alias("len_chars"))
    return out, seconds


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    ok = ~np.isnan(score)
    s, y = score[ok], label[ok]
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def paired_auroc(score: np.ndarray, label: np.ndarray, group: np.ndarray) -> float:
    """AUROC over (correct, incorrect) pairs of solutions to the *same* question (ties count half)."""
    wins = pairs = 0.0
    for q in np.unique(group):
        m = (group == q) & ~np.isnan(score)
        pos, neg = score[m & label], score[m & ~label]
        if len(pos) and len(neg):
            d = pos[:, None] - neg[None, :]
            wins += (d > 0).sum() + 0.5 * (d == 0).sum()
            pairs += d.size
    return float(wins / pairs) if pairs else float("nan")


def boot(fn, *cols: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    m = len(cols[0])
    vals = [fn(*(c[idx] for c in cols)) for idx in (rng.integers(0, m, m) for _ in range(n))]
    vals = np.array([v for v in vals if not np.isnan(v)])
    return (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))) if len(vals) else (np.nan, np.nan)


def rho(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm-questions", type=int, default=50)
    ap.add_argument("--alpaca-instructions", type=int, default=40)
    ap.add_argument("--alpaca-per-instruction", type=int, default=4)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="/tmp/sft-curate-score-quality")
    args = ap.parse_args()
    ctx = RunContext(cache_dir=Path(args.cache_dir))
    t_all = time.perf_counter()

    g, correct, qid = gsm_rows(args.gsm_questions, args.seed)
    gs, g_sec = score_all(g, args, ctx)
    print(f"# model {args.model}, max_tokens {args.max_tokens}; seconds per scorer (GSM8K): "
          + ", ".join(f"{k} {v:.0f}" for k, v in g_sec.items()))
    print(f"\n## GSM8K model solutions: {gs.height} solutions to {len(set(qid))} questions, "
          f"{correct.mean():.1%} correct, {int(gs['ppl_truncated'].sum())} truncated")
    print(f"{'score':<18} {'AUROC is_correct':>17} {'95% CI':>16} {'same-question AUROC':>20}")
    for col, sign in SCORES:
        s = sign * gs[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        lo, hi = boot(auroc, s, correct)
        print(f"{('-' if sign < 0 else '') + col:<18} {auroc(s, correct):>17.3f} {f'[{lo:.2f}, {hi:.2f}]':>16} "
              f"{paired_auroc(s, correct, qid):>20.3f}")
    # GRAPE as published: per question, keep the best-fitting solution
    best = gs["grape_best"].fill_null(False).to_numpy()
    judge_pick = (gs.with_columns(pl.Series("q", qid)).with_columns(
        (pl.col("judge_yes_prob") == pl.col("judge_yes_prob").max().over("q")).alias("jb"))["jb"].to_numpy())
    print(f"\nper-question pick accuracy: GRAPE best {correct[best].mean():.1%} ({best.sum()} picks), "
          f"judge best {correct[judge_pick].mean():.1%}, random pick {correct.mean():.1%}")

    a, pref, winrate = alpaca_rows(args.alpaca_instructions, args.alpaca_per_instruction, args.seed)
    as_, a_sec = score_all(a, args, ctx)
    print(f"\n## AlpacaEval judged: {as_.height} responses to {args.alpaca_instructions} instructions "
          f"({as_['meta'].str.json_path_match('$.model').n_unique()} models), "
          f"{int(as_['ppl_truncated'].sum())} truncated at {args.max_tokens} tokens; seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in a_sec.items()))
    print(f"{'score':<18} {'rho preference':>15} {'95% CI':>16} {'rho model_win_rate':>19} {'95% CI':>16}")
    for col, sign in SCORES:
        s = sign * as_[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
        lo1, hi1 = boot(rho, s, pref)
        lo2, hi2 = boot(rho, s, winrate)
        print(f"{('-' if sign < 0 else '') + col:<18} {rho(s, pref):>15.3f} {f'[{lo1:.2f}, {hi1:.2f}]':>16} "
              f"{rho(s, winrate):>19.3f} {f'[{lo2:.2f}, {hi2:.2f}]':>16}")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s, peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
