"""Judge confidence: P(yes) that a response is correct and helpful, from the model's own judgement.

CLEAR ("Automated Data Curation for Robust Language Model Fine-Tuning", Chen & Mueller 2024)
filters instruction data whose response the LLM is not confident in. Its confidence estimate
follows BSDetector (Chen & Mueller 2023): *self-reflection certainty* (the model is asked whether
the proposed answer is correct) combined with *observed consistency* (agreement of sampled answers
with the given one). This stage computes the self-reflection part from token probabilities: the
judge prompt (:data:`JUDGE_PROMPT`, configurable; fields ``{instruction}``, ``{response}``) is
sent as a user turn, and the score is the probability mass on "yes" tokens normalised over yes and
no tokens at the answer position::

    judge_yes_prob = sum P(yes variants) / (sum P(yes variants) + sum P(no variants))

Departures: BSDetector asks a multiple-choice question (A correct / B incorrect / C not sure) and
reads the sampled letter; here the Yes/No probabilities are read directly (no sampling, a graded
score instead of three levels), and observed consistency (k sampled answers compared with an NLI
model) is not computed. Spellings that map to the same token are counted once. Multi-turn rows:
each assistant turn is judged against the user messages since the previous one; the row gets the
mean (``turn_agg``).

Columns: ``judge_yes_prob``, ``judge_yes_prob_turns``, ``judge_truncated``, ``judge_model``,
``judge_template``. CLEAR's filter is a threshold or a quantile on the certainty, e.g.
``drop_below: 0.3`` (reason ``judge:yes_prob<0.3``) or ``drop_below_quantile: 0.1``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

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

JUDGE_PROMPT = (
    "Question: {instruction}\n\nProposed Answer: {response}\n\n"
    "Is the proposed answer correct and helpful? Answer Yes or No."
)
YES_TOKENS = ["Yes", " Yes", "yes", " yes", "YES"]
NO_TOKENS = ["No", " No", "no", " no", "NO"]


def yes_probability(logprobs: np.ndarray, ids: np.ndarray, n_yes: int) -> np.ndarray:
    """P(yes) normalised over yes+no per row; the first ``n_yes`` columns are yes spellings.

    A token id met twice in a row (two spellings, one token) counts once, for its first column.
    """
    p = np.exp(logprobs)
    dup = np.zeros_like(ids, dtype=bool)
    for j in range(1, ids.shape[1]):
        dup[:, j] = (ids[:, :j] == ids[:, j : j + 1]).any(axis=1)
    p = np.where(dup, 0.0, p)
    yes, no = p[:, :n_yes].sum(axis=1), p[:, n_yes:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return yes / (yes + no)


class JudgeParams(LMParams):
    prompt: str = Field(JUDGE_PROMPT, description="fields: {instruction}, {response}")
    prompt_format: Literal["chat", "raw"] = Field("chat", description="chat: the prompt as a user turn through the model's chat template; raw: the text as is")
    yes_tokens: list[str] = Field(default_factory=lambda: list(YES_TOKENS), min_length=1, description="tokens whose probability counts as 'yes'")
    no_tokens: list[str] = Field(default_factory=lambda: list(NO_TOKENS), min_length=1, description="tokens whose probability counts as 'no'")


class Judge(LMStage):
    """Self-reflection certainty (CLEAR / BSDetector); higher = the model believes the response."""

    name = "judge"
    Params = JudgeParams
    prefix, main, label = "judge", "judge_yes_prob", "yes_prob"
    columns = {
        "judge_yes_prob": pl.Float64,
        "judge_yes_prob_turns": pl.List(pl.Float64),
        "judge_truncated": pl.Boolean,
        "judge_model": pl.String,
        "judge_template": pl.String,
    }

    def template_spec(self) -> dict:
        p = self.params
        return {**super().template_spec(), "prompt": p.prompt, "format": p.prompt_format,
                "yes": p.yes_tokens, "no": p.no_tokens}

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        tt = turn_texts(conv)
        texts = tt.select("id", "turn", pl.Series("text", [fill(p.prompt, instruction=i, response=r) for i, r in
                                                           zip(tt["instruction"].to_list(), tt["response"].to_list(),
                                                               strict=True)], dtype=pl.String))
        cands = [*p.yes_tokens, *p.no_tokens]
        got = self.rating_pass("judge", texts, cands, p.prompt_format, {"prompt": p.prompt})
        lp, ids = rating_matrix(got, len(cands))
        u = got.select("id", "turn", "truncated").with_columns(
            pl.Series("yes", yes_probability(lp, ids, len(p.yes_tokens))).fill_nan(None))
        return per_row(u, aggregate_turns(u, "yes", p.turn_agg, "judge_yes_prob", "judge_yes_prob_turns"))


judge = lm_function(Judge)
