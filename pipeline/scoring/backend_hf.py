"""The transformers backend: token log-probabilities, entropies and rating-token log-probabilities.

Loads ``AutoModelForCausalLM`` / ``AutoTokenizer`` from a local Hugging Face directory or a GGUF
file (``gguf_file=``, dequantised by transformers; needs the ``gguf`` package), never from the
network. CPU runs in float32; CUDA in bfloat16 (float16 where bf16 is unsupported) unless the spec
names a dtype. ``trust_remote_code`` stays off unless the spec turns it on.

One forward pass per packed batch (:mod:`pipeline.scoring.batching`), under
``torch.inference_mode``. The decoder runs over the whole right-padded batch, but the LM head and
the log-softmax run only at the positions that predict a target token or a rating answer, which
saves the vocabulary projection for every context token. Models whose head does more than a
linear projection (final logit soft-capping, logit scaling) take the plain ``model(...).logits``
path instead.

A CUDA out-of-memory error splits the batch in two and retries each half; a single request that
still does not fit gets ``error="oom"`` instead of failing the run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import progress
from pipeline.scoring.batching import pack_batches, padded_tokens, truncate_plan
from pipeline.scoring.protocol import BackendSpec, normalize_requests, request_limits, response_table

#: config attributes that mean logits are not just ``lm_head(hidden)``
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
#: rows of the LM head applied at once (bounds the [positions x vocab] float32 buffer)
_HEAD_CHUNK = 1024


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


class HFBackend:
    """In-process transformers scorer speaking the request/response protocol."""

    def __init__(self, spec: BackendSpec) -> None:
        from pipeline.models import ModelLoadError, resolve_model

        ref = resolve_model(spec.model)  # before the heavy imports: a missing model fails fast
        if "torch" not in sys.modules:
            # OpenMP's default spin-waiting collapses CPU throughput 5-10x when other processes share
            # the cores; passive waiting costs little when they do not. Only effective before torch
            # loads its OpenMP runtime; an explicit OMP_WAIT_POLICY wins.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.model_id = ref.model_id
        want = spec.device
        if want == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        self.device = torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        if spec.dtype != "auto":
            dtype = getattr(torch, spec.dtype)
        elif self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        kw: dict[str, Any] = {"local_files_only": True, "trust_remote_code": spec.trust_remote_code}
        if ref.is_gguf:
            src, kw["gguf_file"] = str(ref.path.parent), ref.path.name
        else:
            src = str(ref.path)
        if spec.threads and self.device.type == "cpu":
            torch.set_num_threads(spec.threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src, **kw)
            self.model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw).to(self.device).eval()
        except Exception as e:
            raise ModelLoadError(spec.model, ref.path, e) from e
        self.dtype = dtype
        cfg = self.model.config
        self._plain_head = not any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in _HEAD_EXTRAS)
        self._decoder = self.model.get_decoder() if self._plain_head else None
        self._head = self.model.get_output_embeddings() if self._plain_head else None
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.token_budget = spec.token_budget or (32768 if self.device.type == "cuda" else 4096)
        self._cand_ids: dict[str, int] = {}
        self._stats = {"requests": 0, "batches": 0, "real_tokens": 0, "padded_tokens": 0,
                       "target_tokens": 0, "forward_s": 0.0, "oom_splits": 0, "oom_rows": 0,
                       "truncated": 0}
        self._lock = threading.Lock()
        #: hook for tests and the benchmark: the function that runs one padded batch
        self.forward = self._forward

    # ------------------------------------------------------------------ protocol
    def info(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {
            "backend": "transformers",
            "model": self.spec.model,
            "model_id": self.model_id,
            "chat_template": tok.chat_template if isinstance(tok.chat_template, str) else None,
            "bos_token": tok.bos_token,
            "eos_token": tok.eos_token,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "token_budget": self.token_budget,
        }

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._decoder = self._head = None

    def candidate_ids(self, candidates: list[str]) -> list[int]:
        """First token id of each rating candidate (as the tokenizer spells it without special tokens)."""
        out = []
        for c in candidates:
            if c not in self._cand_ids:
                ids = self.tokenizer(c, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise ValueError(f"rating candidate {c!r} encodes to no token")
                self._cand_ids[c] = int(ids[0])
            out.append(self._cand_ids[c])
        return out

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def prepare(self, requests: pa.Table) -> dict[str, Any]:
        """Tokenise and truncate ``requests``: the sequences the model will see, and where targets sit."""
        requests = normalize_requests(requests)
        ctx = self.tokenize(requests["context"].to_pylist())
        tgt = self.tokenize(requests["target"].to_pylist())
        n_ctx = np.fromiter((len(x) for x in ctx), np.int64, len(ctx))
        n_tgt = np.fromiter((len(x) for x in tgt), np.int64, len(tgt))
        cap = requests["max_target"].to_numpy(zero_copy_only=False).astype(np.float64)
        plan = truncate_plan(n_ctx, n_tgt, request_limits(requests, self.spec.max_tokens), self.spec.head_tokens, cap)
        seqs, ctx_len = [], plan.ctx_head + plan.ctx_tail
        for i in range(len(ctx)):
            c, h, t = ctx[i], int(plan.ctx_head[i]), int(plan.ctx_tail[i])
            seqs.append(c[:h] + (c[len(c) - t :] if t else []) + tgt[i][: int(plan.tgt[i])])
        return {"seqs": seqs, "ctx_len": ctx_len, "n_tgt_in": n_tgt, "plan": plan,
                "entropy": requests["entropy"].to_pylist(), "rating": requests["rating"].to_pylist(),
                "req_id": requests["req_id"].to_pylist()}

    def score(self, requests: pa.Table) -> pa.Table:
        with self._lock:  # stages on several threads share one model: one batch stream at a time
            return self._score(requests)

    def _score(self, requests: pa.Table) -> pa.Table:
        prep = self.prepare(requests)
        n = len(prep["seqs"])
        plan = prep["plan"]
        lengths = np.fromiter((len(s) for s in prep["seqs"]), np.int64, n)
        lp: list[Any] = [None] * n
        ent: list[Any] = [None] * n
        rat: list[Any] = [None] * n
        rid: list[Any] = [None] * n
        err: list[str | None] = [None] * n
        empty = prep["ctx_len"] < 1
        for i in np.flatnonzero(empty):
            err[i] = "empty"
        live = np.flatnonzero(~empty)
        batches = [live[b] for b in pack_batches(lengths[live], self.token_budget, self.spec.max_batch_size,
                                                self.spec.max_padding)]
        for b in batches:
            self._run(b, prep, lp, ent, rat, err)
        for i, cands in enumerate(prep["rating"]):
            if cands and rat[i] is not None:
                rid[i] = self.candidate_ids(cands)
        self._stats["requests"] += n
        self._stats["real_tokens"] += int(lengths.sum())
        self._stats["padded_tokens"] += padded_tokens(lengths, batches)
        self._stats["target_tokens"] += int(plan.tgt.sum())
        self._stats["truncated"] += int(plan.truncated.sum())
        return response_table(
            {
                "req_id": prep["req_id"],
                "token_logprobs": lp,
                "token_entropy": ent,
                "rating_logprobs": rat,
                "rating_ids": rid,
                "n_context": prep["ctx_len"].tolist(),
                "n_target": plan.tgt.tolist(),
                "n_target_in": prep["n_tgt_in"].tolist(),
                "truncated": plan.truncated.tolist(),
                "error": err,
            }
        )

    # ------------------------------------------------------------------ batches
    def _run(self, idx: np.ndarray, prep: dict[str, Any], lp: list, ent: list, rat: list, err: list) -> None:
        """Score one batch, splitting it on out-of-memory errors."""
        try:
            t0 = time.perf_counter()
            out = self.forward(idx, prep)
            self._stats["forward_s"] += time.perf_counter() - t0
            self._stats["batches"] += 1
        except Exception as e:  # noqa: BLE001 - only OOM is handled, everything else re-raised
            if not _is_oom(e):
                raise
            self._free_memory()
            if len(idx) == 1:
                err[int(idx[0])] = "oom"
                self._stats["oom_rows"] += 1
                return
            self._stats["oom_splits"] += 1
            half = len(idx) // 2
            self._run(idx[:half], prep, lp, ent, rat, err)
            self._run(idx[half:], prep, lp, ent, rat, err)
            return
        for j, i in enumerate(idx):
            i = int(i)
            lp[i], e, r = out[j]
            ent[i] = e if prep["entropy"][i] else None
            rat[i] = r
        progress.advance_current(len(idx))

    def _free_memory(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward(self, idx: np.ndarray, prep: dict[str, Any]) -> list[tuple[list[float], list[float], list[float] | None]]:
        """Run one right-padded batch; per request: target logprobs, target entropies, rating logprobs."""
        import torch

        seqs = [prep["seqs"][int(i)] for i in idx]
        ctx_len = prep["ctx_len"][idx]
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        n_tgt = lengths - ctx_len
        B, L = len(seqs), int(lengths.max())
        ids = np.full((B, L), self.pad_id, dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        # target token j of row r is predicted at position ctx_len[r] - 1 + j; the rating answer at
        # the last real position
        rows_t = np.repeat(np.arange(B), n_tgt)
        starts = np.repeat(ctx_len - 1, n_tgt)
        offs = np.arange(int(n_tgt.sum())) - np.repeat(np.cumsum(n_tgt) - n_tgt, n_tgt)
        pos_t = starts + offs
        tok_t = ids[rows_t, pos_t + 1]
        want_rating = [prep["rating"][int(i)] for i in idx]
        rows_r = np.array([r for r in range(B) if want_rating[r]], dtype=np.int64)
        pos_r = lengths[rows_r] - 1 if len(rows_r) else np.zeros(0, np.int64)
        need_ent = any(prep["entropy"][int(i)] for i in idx)

        dev = self.device
        with torch.inference_mode():
            t_ids = torch.from_numpy(ids).to(dev)
            t_mask = torch.from_numpy(mask).to(dev)
            rows = torch.from_numpy(np.concatenate([rows_t, rows_r])).to(dev)
            pos = torch.from_numpy(np.concatenate([pos_t, pos_r])).to(dev)
            if self._plain_head:
                hidden = self._decoder(input_ids=t_ids, attention_mask=t_mask, use_cache=False).last_hidden_state
                picked = hidden[rows, pos]
                del hidden
                logits_fn = self._head
            else:
                logits = self.model(input_ids=t_ids, attention_mask=t_mask, use_cache=False).logits
                picked = logits[rows, pos]
                del logits

                def logits_fn(x: Any) -> Any:
                    return x

            nt = len(rows_t)
            tok = torch.from_numpy(tok_t).to(dev)
            lp_parts, ent_parts, rat_parts = [], [], []
            for s in range(0, len(picked), _HEAD_CHUNK):
                logp = torch.log_softmax(logits_fn(picked[s : s + _HEAD_CHUNK]).float(), dim=-1)
                k = min(len(logp), max(nt - s, 0))  # rows of this chunk that are target positions
                if k:
                    lp_parts.append(logp[:k].gather(1, tok[s : s + k, None])[:, 0])
                    if need_ent:
                        ent_parts.append(-(logp[:k].exp() * logp[:k]).sum(-1))
                if k < len(logp):
                    rat_parts.append(logp[k:])
                del logp
            tlp = torch.cat(lp_parts).cpu().numpy() if lp_parts else np.zeros(0, np.float32)
            tent = torch.cat(ent_parts).cpu().numpy() if ent_parts else None
            rlog = torch.cat(rat_parts) if rat_parts else None

        bounds = np.concatenate([[0], np.cumsum(n_tgt)])
        out: list[tuple[list[float], list[float], list[float] | None]] = []
        r_at = {int(r): k for k, r in enumerate(rows_r)}
        for r in range(B):
            a, b = int(bounds[r]), int(bounds[r + 1])
            e = tent[a:b].tolist() if tent is not None else []
            rl = None
            if r in r_at and rlog is not None:
                cand = self.candidate_ids(want_rating[r])
                rl = rlog[r_at[r], cand].float().cpu().numpy().tolist()
            out.append((tlp[a:b].tolist(), e, rl))
        return out
