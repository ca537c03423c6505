"""Deita complexity and quality scores, and their product.

From "What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data Selection in
Instruction Tuning" (Liu et al., ICLR 2024; github.com/hkust-nlp/deita). A scorer model is prompted
with Deita's rating templates (used verbatim, :data:`COMPLEXITY_TEMPLATE`, :data:`QUALITY_TEMPLATE`);
the score is the expected rating ``sum_k k * softmax(logits of "1".."6")_k`` at the answer
position. Complexity sees the instruction, quality sees instruction + response, and the Deita score
is complexity x quality. Multi-turn rows are scored per turn, as Deita's pipeline does (the turn's
user message and the assistant reply).

Departures:

* Deita's scorers are Llama/Mistral models fine-tuned on the raw template. With a general instruct
  model (the default SmolLM2), ``prompt_format: chat`` (default) sends the template text as a user
  turn through the model's chat template; ``prompt_format: raw`` sends the text as is (BOS first),
  which is what the published scorers expect (``model: /path/to/deita-quality-scorer``).
* The softmax runs over the log-probabilities of the six rating tokens (same as over their logits).
  Deita falls back to 3.0 when a rating token is missing from the returned logits; here every
  candidate's probability is always computed (the vllm backend's top-k caveat aside).
* Row aggregation: ``turn_agg`` (mean over turns by default) of per-turn complexity, quality and
  complexity x quality; Deita ranks multi-turn samples by the *sum* over turns of
  complexity x quality (``turn_agg: sum``).

Columns: ``deita_complexity``, ``deita_quality``, ``deita_score``, ``deita_complexity_turns``,
``deita_quality_turns``, ``deita_truncated``, ``deita_model``, ``deita_template``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.schema import hash_payloads
from pipeline.scoring.base import (
    LMParams,
    LMStage,
    aggregate_turns,
    lm_function,
    per_row,
    rating_matrix,
    turn_texts,
)
from pipeline.scoring.render import fill

#: hkust-nlp/deita, src/deita/selection/scorer/llama_scorer.py
COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. \n"
    "##Query: {instruction}  \n##Complexity: "
)
QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
RATING_TOKENS = ["1", "2", "3", "4", "5", "6"]


def expected_score(logprobs: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """Expected rating per row of ``logprobs`` (n, k): sum_k value_k * softmax(logprobs)_k; NaN rows stay NaN."""
    values = np.arange(1, logprobs.shape[1] + 1, dtype=np.float64) if values is None else values
    z = logprobs - np.nanmax(logprobs, axis=1, keepdims=True) if logprobs.size else logprobs
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return p @ values


class DeitaParams(LMParams):
    prompt_format: Literal["chat", "raw"] = Field("chat", description="chat: the prompt as a user turn through the model's chat template; raw: the text as is")
    complexity_template: str = Field(COMPLEXITY_TEMPLATE, description="fields: {instruction}")
    quality_template: str = Field(QUALITY_TEMPLATE, description="fields: {instruction}, {output}")


class Deita(LMStage):
    """Deita complexity x quality; higher = more complex instruction with a better response."""

    name = "deita"
    Params = DeitaParams
    prefix, main, label = "deita", "deita_score", "score"
    columns = {
        "deita_complexity": pl.Float64,
        "deita_quality": pl.Float64,
        "deita_score": pl.Float64,
        "deita_complexity_turns": pl.List(pl.Float64),
        "deita_quality_turns": pl.List(pl.Float64),
        "deita_truncated": pl.Boolean,
        "deita_model": pl.String,
        "deita_template": pl.String,
    }

    def template_spec(self) -> dict:
        p = self.params
        return {**super().template_spec(), "format": p.prompt_format, "complexity": p.complexity_template,
                "quality": p.quality_template}

    def _rate(self, name: str, units: pl.DataFrame, template: str) -> pl.DataFrame:
        p = self.params
        got = self.rating_pass(name, units, RATING_TOKENS, p.prompt_format, {"template": template})
        lp, _ = rating_matrix(got, len(RATING_TOKENS))
        return got.select("id", "turn", "truncated").with_columns(pl.Series(name, expected_score(lp)).fill_nan(None))

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        tt = turn_texts(conv)
        qu = tt.select("id", "turn", pl.Series("text", [fill(p.quality_template, instruction=i, output=r)
                                                         for i, r in zip(tt["instruction"].to_list(),
                                                                         tt["response"].to_list(), strict=True)],
                                               dtype=pl.String))
        # complexity sees only the instruction: one request per distinct instruction (rows sharing one,
        # as in GRAPE pools, get the same value, not float-noise variants of it), cached under the
        # instruction's hash (the template is part of the pass's cache key)
        keyed = tt.select("id", "turn", "instruction", hash_payloads(tt["instruction"]).alias("_key"))
        distinct = keyed.unique("_key", maintain_order=True)
        cu = distinct.select(pl.col("_key").alias("id"), pl.lit(0, dtype=tt.schema["turn"]).alias("turn"),
                             pl.Series("text", [fill(p.complexity_template, instruction=i)
                                                for i in distinct["instruction"].to_list()], dtype=pl.String))
        c = keyed.select("id", "turn", "_key").join(
            self._rate("complexity", cu, p.complexity_template).drop("turn").rename({"id": "_key"}),
            on="_key", how="left").drop("_key")
        q = self._rate("quality", qu, p.quality_template)
        u = tt.select("id", "turn").join(c, on=["id", "turn"], how="left").join(
            q, on=["id", "turn"], how="left", suffix="_q").with_columns(
            (pl.col("complexity") * pl.col("quality")).alias("score"),
            (pl.col("truncated").fill_null(False) | pl.col("truncated_q").fill_null(False)).alias("truncated"),
        )
        agg = p.turn_agg
        return per_row(u, [*aggregate_turns(u, "complexity", agg, "deita_complexity", "deita_complexity_turns"),
                           *aggregate_turns(u, "quality", agg, "deita_quality", "deita_quality_turns"),
                           *aggregate_turns(u, "score", agg, "deita_score")])


deita = lm_function(Deita)
