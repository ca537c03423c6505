"""IFD, Instruction-Following Difficulty: ``PPL(y | x) / PPL(y)``.

From Cherry LLM (Li et al., "From Quantity to Quality: Boosting LLM Performance with Self-Guided
Data Selection for Instruction Tuning", NAACL 2024): how little the instruction helps the model
predict the response. IFD > 1 means the instruction makes the response *less* likely, a sign of a
mismatched pair (Cherry drops those); among the rest, high IFD marks hard, informative samples.
Superfiltering (Li et al., ACL 2024) is this score computed with a small model (they use GPT-2):
a small model's IFD ranks data consistently with a large one's, which is what running this stage
with SmolLM2-135M does.

Two passes per assistant turn: the conditional one (shared with :mod:`~pipeline.scoring.perplexity`)
and one with no instruction. Departures from the reference code, which scores the raw Alpaca prompt
and the raw response text:

* both passes use the scoring model's chat template; the unconditional context is the template's
  rendering of an assistant turn with nothing before it (its default system prompt, if any, and
  the assistant header), so both passes score exactly the same target tokens;
* when the conditional pass truncates a long response, the unconditional pass scores the same
  number of tokens (``max_target``), so the ratio compares like with like;
* multi-turn rows: every assistant turn is scored given its preceding conversation, and the row's
  IFD is the mean over turns (``turn_agg``); Cherry scores single-turn pairs only.

Columns: ``ifd``, ``ifd_turns``, ``ifd_ppl_cond``, ``ifd_ppl_uncond``, ``ifd_truncated``,
``ifd_model``, ``ifd_template``. Cherry's filter is ``drop_above: 1.0`` (reason ``ifd:>1.0``).
"""

from __future__ import annotations

import polars as pl

from pipeline.scoring.base import LMParams, LMStage, aggregate_turns, lm_function, per_row, turn_units


class IFDParams(LMParams):
    pass


class IFD(LMStage):
    """Instruction-Following Difficulty (Cherry LLM / Superfiltering)."""

    name = "ifd"
    Params = IFDParams
    prefix, main, label = "ifd", "ifd", ""
    columns = {
        "ifd": pl.Float64,
        "ifd_turns": pl.List(pl.Float64),
        "ifd_ppl_cond": pl.Float64,
        "ifd_ppl_uncond": pl.Float64,
        "ifd_truncated": pl.Boolean,
        "ifd_model": pl.String,
        "ifd_template": pl.String,
    }

    def template_spec(self) -> dict:
        return {**super().template_spec(), "uncond": "chat_template_no_instruction"}

    def compute(self, conv: pl.DataFrame) -> pl.DataFrame:
        cond = self.lik_pass(conv, turn_units(conv))
        ok = cond.filter(pl.col("error").is_null() & (pl.col("n_tokens") > 0)).select("id", "turn")
        unc = self.uncond_pass(conv, ok, cond) if ok.height else cond.clear()
        u = cond.join(unc.select("id", "turn", pl.col("nll").alias("nll_u"), pl.col("truncated").alias("trunc_u")),
                      on=["id", "turn"], how="left").with_columns(
            pl.col("nll").exp().alias("ppl_c"),
            pl.col("nll_u").exp().alias("ppl_u"),
            (pl.col("nll") - pl.col("nll_u")).exp().alias("ifd"),
            (pl.col("truncated") | pl.col("trunc_u").fill_null(False)).alias("truncated"),
        )
        agg = self.params.turn_agg
        return per_row(u, [*aggregate_turns(u, "ifd", agg, "ifd", "ifd_turns"),
                           *aggregate_turns(u, "ppl_c", agg, "ifd_ppl_cond"),
                           *aggregate_turns(u, "ppl_u", agg, "ifd_ppl_uncond")])


ifd = lm_function(IFD)
