"""``evaluate``: fine-tune a base model on each arm and measure every model on the targets.

Order of work, so that bad input fails before any training: settings are validated; the targets are
loaded (a file with no usable rows is an error); the runs are exported and the arms built (an arm
with fewer rows than the budget is an error); the model loads (a path that does not load is an
error); every arm is drawn at every seed with the sequence-length check (a budget that cannot be
filled with rows that fit is an error). Only then does training start.

Then for each seed and each arm: a fresh copy of the base trains on the arm's rows
(:mod:`pipeline.evaluate.train`) and is scored on every target (:mod:`pipeline.evaluate.score`). The
untuned base is scored once. ``evaluation.json`` (written atomically into the primary run's
directory) records the settings, the model, every arm's data hash per seed, the per-item scores, the
statistics (:mod:`pipeline.evaluate.stats`) and wall times; the HTML section reads it back.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.evaluate.arms import Candidates, draw, file_candidates, run_candidates
from pipeline.evaluate.errors import EvaluationError
from pipeline.evaluate.stats import paired_bootstrap, seed_interval
from pipeline.evaluate.targets import load_accuracy_target, load_target, resolve_target

EVALUATION_FILE = "evaluation.json"
BASELINES = ("random", "longest", "uncurated")


class EvalSettings(BaseModel):
    """What to train and how. Every field is recorded in ``evaluation.json``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("smollm2", description="alias, pkg:NAME/path, local HF directory or .gguf file")
    budget: int | None = Field(None, ge=1, description="rows per arm; default: the primary run's selection size")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    baselines: list[str] = Field(default_factory=lambda: list(BASELINES), description="subset of random, longest, uncurated")
    base: bool = Field(True, description="also score the untuned base model")
    epochs: float = Field(1.0, gt=0, description="passes over the budget (sets steps when steps is not given)")
    steps: int | None = Field(None, ge=1, description="optimiser steps per arm (overrides epochs)")
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(512, ge=8, description="training and scoring sequence length (tokens)")
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    targets: list[str] = Field(default_factory=lambda: ["gsm8k", "alpaca_eval", "humaneval"],
                               description="built-in names or files (name=path) the readers accept")
    target_items: int | None = Field(200, ge=1, description="first N usable items per target (None: all)")
    items_per_target: dict[str, int] = Field(default_factory=dict, description="target name -> N, overrides target_items")
    accuracy: str | None = Field("gsm8k", description="exact-match target (GSM8K-style '#### N' answers); None: off")
    accuracy_items: int = Field(50, ge=0, description="questions scored by greedy generation (0: off)")
    max_new_tokens: int = Field(256, ge=1)
    n_boot: int = Field(2000, ge=100)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$")

    @model_validator(mode="after")
    def _check(self) -> EvalSettings:
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines: unknown {', '.join(bad)}; allowed: {', '.join(BASELINES)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: repeated seed")
        return self


def _settings(settings: EvalSettings | dict[str, Any] | None, overrides: dict[str, Any]) -> EvalSettings:
    data = settings.model_dump() if isinstance(settings, EvalSettings) else dict(settings or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvalSettings(**data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "settings"
        raise EvaluationError(f"{loc}: {err['msg']}") from None


def _write_json_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def evaluate(runs: list[str | Path], arms: list[str] | tuple[str, ...] = (),
             settings: EvalSettings | dict[str, Any] | None = None, out: str | Path | None = None,
             log: Callable[[str], None] | None = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune ``settings.model`` on each arm and score every model on the targets.

    :param runs: run directories; the first is the primary run (its selection, and the random,
        longest and uncurated baselines drawn from it); the others add their selections as arms.
    :param arms: more arms: run directories or files the readers accept (``name=path`` names them).
    :param settings: :class:`EvalSettings` or a dict of its fields; keyword ``overrides`` win.
    :param out: where ``evaluation.json`` goes (default: the primary run's directory).
    :param log: progress lines (default: none).
    :returns: the ``evaluation.json`` document; ``["path"]`` is where it was written.
    :raises EvaluationError: bad input, before training starts.
    """
    log = log or (lambda _m: None)
    t_all = time.perf_counter()
    st = _settings(settings, overrides)
    if not runs:
        raise EvaluationError("runs: give at least one run directory")
    run_dirs = [Path(r) for r in runs]
    primary = run_dirs[0]
    out_dir = Path(out) if out else primary
    work = out_dir / "evaluation"
    work.mkdir(parents=True, exist_ok=True)

    # 1. targets (cheap; a file without usable rows fails here)
    targets = [load_target(t, st.items_per_target.get(resolve_target(t)[0], st.target_items)) for t in st.targets]
    acc = load_accuracy_target(st.accuracy, st.accuracy_items) if st.accuracy and st.accuracy_items else None
    names = [t.name for t in targets] + ([acc.name] if acc else [])
    if len(set(names)) != len(names):
        raise EvaluationError(f"targets: two targets share a name ({', '.join(names)}); name them with name=path")
    if not targets and acc is None:
        raise EvaluationError("targets: nothing to evaluate (no loss target and accuracy off)")

    # 2. arms
    cands: list[Candidates] = []
    sources: list[dict[str, Any]] = []
    for i, rd in enumerate(run_dirs):
        c, info = run_candidates(rd, work, with_baselines=i == 0, baselines=tuple(st.baselines),
                                 name=None if i == 0 else rd.name)
        cands += c
        sources.append(info)
    for a in arms:
        p = Path(a.partition("=")[2] or a) if "=" in a else Path(a)
        if p.is_dir() and (p / "manifest.json").exists():
            name = a.partition("=")[0] if "=" in a else p.name
            c, info = run_candidates(p, work, with_baselines=False, name=name)
            cands += c
            sources.append(info)
        else:
            cands.append(file_candidates(a))
    seen: dict[str, int] = {}
    for c in cands:  # unique arm names (two runs with the same selector)
        if c.name in seen:
            seen[c.name] += 1
            c.name = f"{c.name}#{seen[c.name]}"
        else:
            seen[c.name] = 1
    budget = st.budget or len(cands[0].messages)
    if budget < 1:
        raise EvaluationError(f"arm {cands[0].name!r}: the primary run's selection is empty")
    short = [c for c in cands if len(c.messages) < budget]
    if short:
        raise EvaluationError("; ".join(f"arm {c.name!r} has {len(c.messages)} rows, fewer than the budget of {budget}"
                                        for c in short))

    # 3. model
    from pipeline.evaluate.train import TrainSettings, fits, load_base, steps_for, train_arm

    t0 = time.perf_counter()
    base = load_base(st.model, st.device, st.dtype)
    load_s = time.perf_counter() - t0
    log(f"model {st.model} loaded on {base.device} ({base.dtype}) in {load_s:.1f}s")

    # 4. every arm at every seed, with the sequence-length check
    fit = fits(base.tokenizer, st.max_length)
    drawn = {(c.name, s): draw(c, s, budget, fit) for c in cands for s in st.seeds}
    steps = st.steps or steps_for(budget, st.epochs, st.batch_size, st.grad_accum)
    ts = TrainSettings(steps=steps, batch_size=st.batch_size, grad_accum=st.grad_accum,
                       learning_rate=st.learning_rate, max_length=st.max_length, lora=st.lora, lora_r=st.lora_r,
                       warmup_ratio=st.warmup_ratio)

    from pipeline.evaluate.score import exact_match, nll

    def score_all(model: Any) -> tuple[dict[str, Any], float]:
        res: dict[str, Any] = {}
        t = time.perf_counter()
        for tg in targets:
            v, n = nll(model, base.tokenizer, tg, st.max_length)
            res[tg.name] = {"items": v.round(6).tolist(), "tokens": n.tolist(), "mean": float(v.mean())}
        if acc is not None:
            hits, gens = exact_match(model, base.tokenizer, acc, st.max_new_tokens)
            res[acc.name] = {"items": hits.tolist(), "mean": float(hits.mean()), "generations": gens}
        return res, round(time.perf_counter() - t, 2)

    models: list[dict[str, Any]] = []
    if st.base:
        log("scoring the untuned base")
        scores, s_wall = score_all(base.model)
        models.append({"arm": "base", "kind": "base", "seed": None, "scores": scores, "score_wall_s": s_wall})
    for s in st.seeds:
        for c in cands:
            a = drawn[(c.name, s)]
            log(f"seed {s}: training arm {c.name} ({budget} rows, {steps} steps)")
            model, rec = train_arm(base, a, ts, s)
            scores, s_wall = score_all(model)
            del model
            models.append({"arm": c.name, "kind": c.kind, "seed": s, "data_sha256": a.data_hash,
                           "skipped_too_long": a.skipped_too_long, "train": rec, "scores": scores,
                           "score_wall_s": s_wall})
            log(f"  loss {rec['loss_first']:.3f} -> {rec['loss_last']:.3f} in {rec['wall_s']:.0f}s; "
                + ", ".join(f"{k} {v['mean']:.4f}" for k, v in scores.items()))

    doc = {
        "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "primary_run": str(primary),
        "runs": sources,
        "settings": st.model_dump(),
        "budget": budget,
        "steps": steps,
        "model": {"ref": base.ref, "path": base.path, "model_id": base.model_id, "device": base.device,
                  "dtype": base.dtype, "load_s": round(load_s, 2)},
        "arms": [{"name": c.name, "kind": c.kind, "source": c.source, "per_seed": c.per_seed,
                  "pool_rows": len(c.messages), **c.info} for c in cands],
        "targets": [{"name": t.name, "kind": "nll", "path": t.path, "sha256": t.sha256, "items": len(t),
                     "rows_read": t.rows_read, "rows_unusable": t.rows_unusable} for t in targets]
        + ([{"name": acc.name, "kind": "accuracy", "path": acc.path, "sha256": acc.sha256, "items": len(acc),
             "max_new_tokens": st.max_new_tokens}] if acc else []),
        "models": models,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    doc["summary"] = summarize(doc, st.n_boot)
    doc["wall_s"] = round(time.perf_counter() - t_all, 2)
    path = out_dir / EVALUATION_FILE
    _write_json_atomic(doc, path)
    doc["path"] = str(path)
    return doc


def summarize(doc: dict[str, Any], n_boot: int = 2000) -> dict[str, Any]:
    """Per arm x target: mean and 95% interval over seeds; per target: paired bootstrap vs random."""
    targets = [t["name"] for t in doc["targets"]]
    arm_names = (["base"] if any(m["arm"] == "base" for m in doc["models"]) else []) + [a["name"] for a in doc["arms"]]
    by_arm: dict[str, list[dict[str, Any]]] = {a: [m for m in doc["models"] if m["arm"] == a] for a in arm_names}
    table: dict[str, dict[str, Any]] = {}
    for a, ms in by_arm.items():
        table[a] = {t: seed_interval([m["scores"][t]["mean"] for m in ms]) for t in targets}
    vs: dict[str, dict[str, Any]] = {}
    rnd = by_arm.get("random") or []
    if rnd:
        for t in targets:
            ref = np.mean([m["scores"][t]["items"] for m in rnd], axis=0)
            vs[t] = {a: paired_bootstrap(np.mean([m["scores"][t]["items"] for m in ms], axis=0), ref, n_boot)
                     for a, ms in by_arm.items() if a != "random" and ms}
    train = {a: seed_interval([m["train"]["loss_last"] for m in ms if m.get("train")]) for a, ms in by_arm.items()}
    return {"table": table, "vs_random": vs, "train_loss_last": train, "arms": arm_names, "targets": targets,
            "lower_is_better": {t["name"]: t["kind"] == "nll" for t in doc["targets"]}}


def load_evaluation(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / EVALUATION_FILE
    return json.loads(p.read_text()) if p.exists() else None


def vs_random_rows(summary: dict[str, Any]) -> list[tuple[str, list[dict[str, float] | None]]]:
    """``(arm, [paired bootstrap vs random per target, or None])`` for every arm but random: the rows
    both the terminal table and the report section show."""
    return [(a, [summary["vs_random"].get(t, {}).get(a) for t in summary["targets"]])
            for a in summary["arms"] if a != "random"]


def format_table(doc: dict[str, Any]) -> str:
    """The terminal table: arms x targets, mean [95% interval over seeds], and the difference to random."""
    s = doc["summary"]
    lines = [f"model {doc['model']['ref']} on {doc['model']['device']}; budget {doc['budget']} rows, "
             f"{doc['steps']} steps, seeds {doc['settings']['seeds']}; wall {doc['wall_s']:.0f}s", ""]
    w = max(12, *(len(a) for a in s["arms"]))
    head = f"{'arm':<{w}} " + " ".join(f"{t + (' (nll)' if s['lower_is_better'][t] else ' (acc)'):>28}" for t in s["targets"])
    lines += [head, "-" * len(head)]
    for a in s["arms"]:
        cells = []
        for t in s["targets"]:
            c = s["table"][a][t]
            if c["mean"] is None:
                cells.append(f"{'-':>28}")
                continue
            iv = f" [{c['lo']:.3f},{c['hi']:.3f}]" if c["lo"] is not None else ""
            cells.append(f"{c['mean']:.4f}{iv}".rjust(28))
        lines.append(f"{a:<{w}} " + " ".join(cells))
    if s["vs_random"]:
        lines += ["", "paired bootstrap over target items, arm minus random (95% interval):"]
        lines.append(f"{'arm':<{w}} " + " ".join(f"{t:>28}" for t in s["targets"]))
        for a, diffs in vs_random_rows(s):
            cells = [f"{b['diff']:+.4f} [{b['lo']:+.3f},{b['hi']:+.3f}]".rjust(28) if b else f"{'-':>28}" for b in diffs]
            lines.append(f"{a:<{w}} " + " ".join(cells))
    return "\n".join(lines)
