"""Which columns are scores: stage contracts when the manifest has them, else the name/type heuristic."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.io.readers import read_table
from pipeline.score_columns import contract_roles, score_columns
from pipeline.stages import cluster, exact_dedup, heuristics, length, select_top_k


def test_real_stage_output(real_dir: Path) -> None:
    rows, _ = read_table(str(real_dir / "code_alpaca_2k.json.gz"))
    df = select_top_k(exact_dedup(heuristics(length(rows.head(400)))), 50, "len_response_tokens")
    schema = dict(df.schema) | {"cluster": pl.Int64, "kmq_cluster": pl.Int64, "grape_group": pl.UInt64,
                                "minhash_component": pl.String, "ppl": pl.Float64}
    got = score_columns(schema)
    assert {"len_response_tokens", "heur_non_alnum_ratio", "heur_rep_ngram_ratio", "ppl"} <= set(got)
    assert not {"exact_hash", "source_row", "select_rank", "dup_of_row", "cluster", "kmq_cluster", "grape_group",
                "keep", "heur_code_like", "minhash_component"} & set(got)
    assert cluster.stage_class.columns["cluster"] == pl.Int64  # the names above are the stages' own


def test_contract_roles_decide_where_declared() -> None:
    manifest = {"stages": [
        {"name": "length", "contract": {"columns": {"len_turns": {"role": "label"}}}},
        {"name": "exact_dedup", "contract": {"writes": {"exact_hash": "key", "dup_of_row": {"role": "score"}}}},
        {"name": "old"},  # no contract: heuristic
    ]}
    assert contract_roles(manifest["stages"]) == {"len_turns": "label", "exact_hash": "key", "dup_of_row": "score"}
    schema = {"len_turns": pl.Int64, "exact_hash": pl.UInt64, "dup_of_row": pl.Int64, "len_total_tokens": pl.Int64,
              "source_row": pl.Int64}
    assert score_columns(schema, manifest) == ["dup_of_row", "len_total_tokens"]
