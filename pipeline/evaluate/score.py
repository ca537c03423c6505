"""Scoring a model on the targets: per-item NLL of reference responses, and greedy-generation exact match.

NLL: each item is rendered with the model's chat template, the prompt with the generation header,
then the reference response and the end-of-turn token, exactly as training renders a completion. The
item's score is the mean negative log-likelihood (nats per token) of its response tokens. A sequence
longer than ``max_length`` keeps the prompt's last ``max_length // 2`` tokens at most and cuts the
response at the end, so long items are scored on the same window for every model.

Only the positions that predict a response token go through the LM head (as in
:mod:`pipeline.scoring.backend_hf`): the decoder runs over the padded batch, the vocabulary projection
and log-softmax only where they are needed.

Exact match: the question is rendered with the generation header, the model generates greedily up to
``max_new_tokens`` (batched, left-padded), and the answer is the number after ``####`` or the last
number of the generation (:func:`pipeline.evaluate.targets.predicted_answer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.evaluate.targets import AccuracyTarget, Target, predicted_answer


def encode_items(tok: Any, prompts: list[list[dict[str, str]]], refs: list[str],
                 max_length: int) -> list[tuple[list[int], int]]:
    """``(token ids, number of prompt tokens)`` per item, truncated to ``max_length``."""
    p_txt = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    f_txt = [tok.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, refs, strict=True)]
    p_ids = tok(p_txt, add_special_tokens=False)["input_ids"]
    f_ids = tok(f_txt, add_special_tokens=False)["input_ids"]
    out = []
    for pi, fi in zip(p_ids, f_ids, strict=True):
        n_p = len(pi)
        if fi[:n_p] != pi:  # a template that renders the prompt differently with a response after it
            n_p = next((j for j, (a, b) in enumerate(zip(pi, fi, strict=False)) if a != b), min(len(pi), len(fi)))
        resp = fi[n_p:]
        keep_p = min(n_p, max(1, max_length // 2)) if n_p + len(resp) > max_length else n_p
        prompt = fi[n_p - keep_p: n_p]
        resp = resp[: max(1, max_length - keep_p)]
        out.append((prompt + resp, keep_p))
    return out


def nll(model: Any, tok: Any, target: Target, max_length: int, token_budget: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per item: mean NLL per response token, and the number of response tokens scored."""
    import torch

    enc = encode_items(tok, target.prompts, target.references, max_length)
    lengths = np.array([len(s) for s, _ in enc])
    order = np.argsort(-lengths, kind="stable")
    res = np.zeros(len(enc))
    ntok = np.zeros(len(enc), np.int64)
    dev = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    plain = getattr(model.config, "final_logit_softcapping", None) is None
    i = 0
    with torch.inference_mode():
        while i < len(order):
            width = int(lengths[order[i]])
            bs = max(1, token_budget // max(width, 1))
            idx = order[i: i + bs]
            i += len(idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            att = torch.zeros((len(idx), width), dtype=torch.long)
            for j, k in enumerate(idx):
                s = enc[int(k)][0]
                ids[j, : len(s)] = torch.tensor(s)
                att[j, : len(s)] = 1
            ids, att = ids.to(dev), att.to(dev)
            if plain:
                hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state
            else:
                logits_all = model(input_ids=ids, attention_mask=att).logits
            for j, k in enumerate(idx):
                s, n_p = enc[int(k)]
                pos = torch.arange(n_p - 1, len(s) - 1, device=dev)  # positions predicting response tokens
                logits = head(hidden[j, pos]) if plain else logits_all[j, pos]
                lp = torch.log_softmax(logits.float(), dim=-1)
                tgt = torch.tensor(s[n_p:], device=dev)
                res[int(k)] = float(-lp.gather(1, tgt[:, None]).mean())
                ntok[int(k)] = len(tgt)
    return res, ntok


def exact_match(model: Any, tok: Any, target: AccuracyTarget, max_new_tokens: int,
                batch_size: int = 16) -> tuple[np.ndarray, list[str]]:
    """Per item 1.0 if the greedy answer equals the gold answer, else 0.0; and the generations."""
    import torch

    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in target.prompts]
    side = tok.padding_side
    tok.padding_side = "left"
    dev = next(model.parameters()).device
    gens: list[str] = []
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                b = tok(texts[i: i + batch_size], add_special_tokens=False, return_tensors="pt", padding=True).to(dev)
                out = model.generate(**b, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     temperature=None, top_p=None, top_k=None)
                gens += tok.batch_decode(out[:, b["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tok.padding_side = side
    hits = np.array([float(predicted_answer(g) == a) for g, a in zip(gens, target.answers, strict=True)])
    return hits, gens
