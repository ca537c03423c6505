"""Throughput of the LM scorers on CPU, and the pipeline against a bare forward loop.

    .venv/bin/python benchmarks/scoring.py [--rows 64] [--max-tokens 512] [--repeats 3]

Real rows: Code Alpaca (``shared/data/real/code_alpaca_2k.json.gz``, first ``--rows`` rows), scored
with SmolLM2-135M-Instruct (GGUF, float32 on CPU). Prints, per scorer (cache off): rows/s,
tokens/s (context + target tokens through the model), padding waste of the packed batches, and the
process's peak RSS after it.

Then the same perplexity requests three ways, best of ``--repeats`` (the CPU may be shared):

* ``pipeline``: ``HFBackend.score`` end to end (tokenise, truncate, pack, forward, log-probs out);
* ``bare loop``: only ``log_softmax(model(ids).logits)`` + gather over the *same* packed batches,
  pre-tokenised and pre-padded, the floor any HF-based scorer pays for these batches;
* ``per-sample loop`` (peer): one full forward per request, as the Cherry LLM / Deita reference
  scorers do.

The pipeline should stay within 10% of the bare loop (it applies the LM head only at target
positions, so it can be faster).
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

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pipeline.io.readers import read_table  # noqa: E402
from pipeline.scoring import backend as backends  # noqa: E402
from pipeline.scoring.batching import pack_batches  # noqa: E402
from pipeline.scoring.protocol import make_requests  # noqa: E402
from pipeline.scoring.render import ChatRenderer  # noqa: E402
from pipeline.scoring.stages import IFD, Deita, ErrorUncertainty, Grape, Judge, Perplexity  # noqa: E402

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_loop(model, batches: list[tuple]) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, mask, rows, pos, tok in batches:
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float(), -1)
            logp[rows, pos].gather(1, tok[:, None])
    return time.perf_counter() - t0


def per_sample_loop(model, seqs: list[list[int]], ctx_len: np.ndarray) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for s, c in zip(seqs, ctx_len, strict=True):
            ids = torch.tensor([s])
            logp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].float(), -1)
            logp[c - 1 : len(s) - 1].gather(1, ids[0, c:, None])
    return time.perf_counter() - t0


def padded_batches(backend, prep: dict) -> list[tuple]:
    import torch

    seqs, ctx_len = prep["seqs"], prep["ctx_len"]
    lengths = np.array([len(s) for s in seqs])
    out = []
    for b in pack_batches(lengths, backend.token_budget, backend.spec.max_batch_size, backend.spec.max_padding):
        L = int(lengths[b].max())
        ids = np.full((len(b), L), backend.pad_id)
        mask = np.zeros((len(b), L), dtype=np.int64)
        rows, pos = [], []
        for r, i in enumerate(b):
            ids[r, : lengths[i]] = seqs[i]
            mask[r, : lengths[i]] = 1
            rows += [r] * int(lengths[i] - ctx_len[i])
            pos += list(range(int(ctx_len[i]) - 1, int(lengths[i]) - 1))
        t_ids = torch.from_numpy(ids)
        out.append((t_ids, torch.from_numpy(mask), torch.tensor(rows), torch.tensor(pos),
                    t_ids[torch.tensor(rows), torch.tensor(pos) + 1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
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

    info = backend.info()
    r = ChatRenderer(info["chat_template"], info["bos_token"], info["eos_token"])
    pairs = [p for m in rows["messages"].to_list() for p in r.turn_pairs(m)]
    req = make_requests([c for _, c, _ in pairs], [y for _, _, y in pairs], max_tokens=args.max_tokens)
    prep = backend.prepare(req)
    batches = padded_batches(backend, prep)
    n_tok = sum(len(s) for s in prep["seqs"])
    times: dict[str, list[float]] = {"pipeline": [], "bare loop": []}
    for _ in range(args.repeats):  # interleaved, so a noisy neighbour hurts both alike
        t0 = time.perf_counter()
        backend.score(req)
        times["pipeline"].append(time.perf_counter() - t0)
        times["bare loop"].append(bare_loop(backend.model, batches))
    times["per-sample loop (peer)"] = [per_sample_loop(backend.model, prep["seqs"], prep["ctx_len"])]
    base = min(times["bare loop"])
    print(f"\nperplexity requests: {len(pairs)} rows, {n_tok} tokens, {len(batches)} packed batches "
          f"(best of {args.repeats})")
    print(f"{'path':<24} {'seconds':>8} {'rows/s':>8} {'tokens/s':>9} {'vs bare':>8}")
    for k, v in times.items():
        t = min(v)
        print(f"{k:<24} {t:>8.2f} {len(pairs) / t:>8.2f} {n_tok / t:>9.0f} {t / base:>8.2f}x")
    print(f"\npeak RSS {rss_mb():.0f} MB; polars {pl.__version__}, torch {torch.__version__}")
    backends.release(backend)


if __name__ == "__main__":
    main()
