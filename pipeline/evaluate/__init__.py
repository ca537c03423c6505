"""Proof by training: fine-tune a base model on each selected subset and measure what curation bought.

``evaluate(runs, arms, settings)`` (also ``curate evaluate``) trains one model per arm and seed with
TRL's ``SFTTrainer`` and scores each, and the untuned base, on held-out targets. Modules by concern:
:mod:`.arms` (which rows train each model), :mod:`.targets` (what is measured), :mod:`.train`
(model loading and fine-tuning), :mod:`.score` (NLL and exact match), :mod:`.stats` (intervals and
bootstraps), :mod:`.core` (the orchestration and ``evaluation.json``), :mod:`.section` (the report's
HTML section). Heavy imports (torch, transformers, trl, peft) happen only when training starts.
"""

from __future__ import annotations

from pipeline.evaluate.core import EVALUATION_FILE, EvalSettings, evaluate, format_table, load_evaluation
from pipeline.evaluate.errors import EvaluationError
from pipeline.evaluate.section import evaluation_section_html

__all__ = ["EVALUATION_FILE", "EvalSettings", "EvaluationError", "evaluate", "evaluation_section_html",
           "format_table", "load_evaluation"]
