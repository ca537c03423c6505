"""Long-is-More: select the ``budget`` rows with the longest responses.

Zhao et al., "Long Is More for Alignment: A Simple but Tough-to-Beat Baseline for Instruction
Fine-Tuning" (ICML 2024): the 1k longest responses of an instruction pool beat LIMA and AlpaGasus
selections. Length is measured in response tokens (``len_response_tokens`` from the length stage)
or characters (``len_response_chars``), so a length stage must run before it (a config without
one fails validation, naming both); the plain function adds the counts to a bare table itself.
Ties are broken by input order, so the result is deterministic.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from pipeline.select.base import Selector, SelectParams
from pipeline.stages.functions import stage_function


class LongIsMoreParams(SelectParams):
    by: Literal["len_response_tokens", "len_response_chars"] = Field("len_response_tokens", description="length column to rank by, longest first (written by the length stage)")


class LongIsMore(Selector):
    name = "long_is_more"
    Params = LongIsMoreParams
    input_params = ("by",)  # a length column: put a length stage before it

    def global_inputs(self) -> tuple[str, ...]:
        return (self.params.by,)

    def rank(self, df: pl.DataFrame, cand: np.ndarray) -> np.ndarray:
        if self.params.by not in df.columns:
            raise ValueError(f"long_is_more: column {self.params.by!r} not in table; run the length stage first")
        idx = np.flatnonzero(cand)
        length = df[self.params.by].to_numpy()[idx]
        return idx[np.argsort(-length, kind="stable")]


long_is_more = stage_function(LongIsMore, ("budget",))
