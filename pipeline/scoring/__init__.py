"""LLM-confidence scoring: one protocol, two backends, six scorers.

* :mod:`~pipeline.scoring.protocol`: request/response records ((context, target) -> token
  logprobs, entropies, rating-token logprobs) as Arrow tables, and the framing used by workers;
* :mod:`~pipeline.scoring.batching`: truncation policy and length-sorted token-budget packing;
* :mod:`~pipeline.scoring.backend_hf` (transformers, CPU/CUDA, HF dir or GGUF) and
  :mod:`~pipeline.scoring.backend_vllm` (vllm, only inside a worker);
* :mod:`~pipeline.scoring.worker`: the worker process and its client;
* :mod:`~pipeline.scoring.render`: chat-template rendering of (context, target) pairs;
* :mod:`~pipeline.scoring.cache`: per-turn score cache keyed by (id, model id, template hash);
* scorers: :mod:`~pipeline.scoring.perplexity`, :mod:`~pipeline.scoring.ifd`,
  :mod:`~pipeline.scoring.deita`, :mod:`~pipeline.scoring.judge`, :mod:`~pipeline.scoring.grape`,
  :mod:`~pipeline.scoring.error_uncertainty`; stage classes in :mod:`~pipeline.scoring.stages`.

Nothing here imports torch, transformers or vllm at import time.
"""
