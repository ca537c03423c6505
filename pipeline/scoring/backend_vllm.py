"""The vllm backend: the offline ``vllm.LLM`` API, imported only inside the worker process.

vllm pins clash with Prefect's, so this module runs in a worker with its own interpreter
(:mod:`pipeline.scoring.worker`); it shares tokenisation-side truncation with the transformers
backend and keeps the vllm calls to a minimum. Untested here (vllm cannot be installed on the CI
machine); the protocol around it is tested with the transformers backend in the same worker.

* target log-probabilities: ``SamplingParams(prompt_logprobs=k)`` over ``context + target`` as
  token ids; the logprob of each actual target token is always among those returned;
* entropy: from the top-``logprobs_topk`` prompt logprobs with the remaining mass as one bucket,
  a lower bound of the full-vocabulary entropy (the transformers backend computes it exactly);
* rating tokens: one generated token with ``logprobs=logprobs_topk``; a candidate outside the
  returned top-k gets the smallest returned logprob (an upper bound), as Deita's reference scorer
  falls back when a rating token is missing;
* prefix caching on, so rating prompts and multi-turn contexts that share a prefix are cheap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.scoring.batching import truncate_plan
from pipeline.scoring.protocol import BackendSpec, normalize_requests, request_limits, response_table


class VLLMBackend:
    def __init__(self, spec: BackendSpec) -> None:
        from vllm import LLM

        from pipeline.models import resolve_model

        ref = resolve_model(spec.model)
        self.spec, self.model_id = spec, ref.model_id
        kw: dict[str, Any] = {}
        if ref.is_gguf:
            kw["tokenizer"] = str(ref.path.parent)
        self.llm = LLM(
            model=str(ref.path),
            dtype="auto" if spec.dtype == "auto" else spec.dtype,
            trust_remote_code=spec.trust_remote_code,
            enable_prefix_caching=True,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            tensor_parallel_size=spec.tensor_parallel_size,
            max_model_len=spec.max_tokens + 1,
            max_logprobs=spec.logprobs_topk,
            **kw,
            **spec.extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._stats = {"requests": 0, "real_tokens": 0, "target_tokens": 0, "truncated": 0}

    def info(self) -> dict[str, Any]:
        tok = self.tokenizer
        return {"backend": "vllm", "model": self.spec.model, "model_id": self.model_id,
                "chat_template": getattr(tok, "chat_template", None), "bos_token": tok.bos_token,
                "eos_token": tok.eos_token, "device": "cuda", "dtype": self.spec.dtype}

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def close(self) -> None:
        self.llm = None

    def score(self, requests: pa.Table) -> pa.Table:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tok, k = self.tokenizer, self.spec.logprobs_topk
        requests = normalize_requests(requests)
        ctx = [tok.encode(t, add_special_tokens=False) for t in requests["context"].to_pylist()]
        tgt = [tok.encode(t, add_special_tokens=False) for t in requests["target"].to_pylist()]
        cap = requests["max_target"].to_numpy(zero_copy_only=False).astype(np.float64)
        plan = truncate_plan(np.array([len(c) for c in ctx]), np.array([len(t) for t in tgt]),
                             request_limits(requests, self.spec.max_tokens, cap=True), self.spec.head_tokens, cap)
        ent_on, ratings = requests["entropy"].to_pylist(), requests["rating"].to_pylist()
        prompts, params, seqs = [], [], []
        for i, c in enumerate(ctx):
            h, t = int(plan.ctx_head[i]), int(plan.ctx_tail[i])
            s = c[:h] + (c[len(c) - t:] if t else []) + tgt[i][: int(plan.tgt[i])]
            seqs.append(s)
            prompts.append(TokensPrompt(prompt_token_ids=s))
            params.append(SamplingParams(max_tokens=1, temperature=0.0,
                                         prompt_logprobs=k if ent_on[i] else 0,
                                         logprobs=k if ratings[i] else None))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        lp, ent, rat, rid = [], [], [], []
        for i, o in enumerate(outs):
            s, start = seqs[i], int(plan.ctx_head[i] + plan.ctx_tail[i])
            pl = o.prompt_logprobs or []
            if start < 1:  # nothing to condition the first target token on
                lp.append(None)
                ent.append(None)
                rat.append(None)
                rid.append(None)
                continue
            lp.append([pl[p][s[p]].logprob for p in range(start, len(s))])
            if ent_on[i]:
                ent.append([_topk_entropy([v.logprob for v in pl[p].values()]) for p in range(start, len(s))])
            else:
                ent.append(None)
            if ratings[i]:
                top = o.outputs[0].logprobs[0] if o.outputs and o.outputs[0].logprobs else {}
                floor = min((v.logprob for v in top.values()), default=-math.inf)
                ids = [tok.encode(c, add_special_tokens=False)[0] for c in ratings[i]]
                rat.append([top[j].logprob if j in top else floor for j in ids])
                rid.append(ids)
            else:
                rat.append(None)
                rid.append(None)
        self._stats["requests"] += len(seqs)
        self._stats["real_tokens"] += sum(len(s) for s in seqs)
        self._stats["target_tokens"] += int(plan.tgt.sum())
        self._stats["truncated"] += int(plan.truncated.sum())
        ctx_len = plan.ctx_head + plan.ctx_tail
        return response_table({
            "req_id": requests["req_id"].to_pylist(), "token_logprobs": lp, "token_entropy": ent,
            "rating_logprobs": rat, "rating_ids": rid, "n_context": ctx_len.tolist(), "n_target": plan.tgt.tolist(),
            "n_target_in": [len(t) for t in tgt], "truncated": plan.truncated.tolist(),
            "error": ["empty" if c < 1 else None for c in ctx_len],
        })


def _topk_entropy(logprobs: list[float]) -> float:
    p = np.exp(np.asarray(logprobs, dtype=np.float64))
    rest = max(1.0 - p.sum(), 0.0)
    h = -(p * np.log(np.maximum(p, 1e-300))).sum()
    return float(h - (rest * math.log(rest) if rest > 0 else 0.0))
