"""Peer: a bare transformers perplexity loop at its best - the same SmolLM2-135M GGUF loaded by
transformers (float32 on CPU, every core), each pair rendered with the model's chat template, rows
sorted by length and run 16 at a time (right-padded, ``torch.inference_mode``), the mean NLL of the
response tokens (with the end-of-turn marker) by ``cross_entropy`` over the batch's logits (labels
shifted in place, so no copy of the logits is made). Writes each row's
perplexity in the input order.

    python lm_hf.py lm_N.parquet OUT.npy GGUF_FILE [BATCH]"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

src, dst, gguf = sys.argv[1], sys.argv[2], Path(sys.argv[3])
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 16
t = pq.read_table(src).to_pydict()
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                             local_files_only=True).eval()
seqs, starts = [], []
for ins, res in zip(t["instruction"], t["response"], strict=True):
    ctx = tok.apply_chat_template([{"role": "user", "content": ins}], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([{"role": "user", "content": ins}, {"role": "assistant", "content": res}],
                                   tokenize=False)
    a = tok(ctx, add_special_tokens=False)["input_ids"]
    b = tok(full, add_special_tokens=False)["input_ids"]
    seqs.append(b)
    starts.append(len(a))
order = np.argsort([len(s) for s in seqs], kind="stable")
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
ppl = np.zeros(len(seqs))
with torch.inference_mode():
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        width = max(len(seqs[j]) for j in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, :len(seqs[j])] = torch.tensor(seqs[j])
            mask[r, :len(seqs[j])] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        labels = torch.full_like(ids, -100)
        labels[:, :-1] = ids[:, 1:]  # logits at position p predict token p + 1
        nll = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                reduction="none").view(ids.shape)
        for r, j in enumerate(idx):
            ppl[j] = float(torch.exp(nll[r, starts[j] - 1:len(seqs[j]) - 1].mean()))
np.save(dst, ppl)
