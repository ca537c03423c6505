"""Inspect a curated run: row accounting, score distributions, clusters, examples, what-if, comparisons.

Everything the notebooks (``notebooks/inspect_run.ipynb``, ``notebooks/compare_runs.ipynb``) and the
HTML report show is computed here, so the notebooks stay thin and this package is what gets tested.
One module per concern:

* :mod:`~pipeline.inspect.run`: :func:`load_run` (manifest, lazy scans, layout, embeddings sidecar,
  drop reason -> stage);
* :mod:`~pipeline.inspect.tables`: :func:`accounting`, :func:`drop_reasons`, :func:`reject_reasons`,
  :func:`sources_table`, :func:`stages_table`, :func:`params_table`, :func:`settings_table`,
  :func:`score_summary`, :func:`score_by_source`, :func:`cluster_table`;
* :mod:`~pipeline.inspect.charts`: :class:`Chart` and the ``plot_*`` functions of one run;
* :mod:`~pipeline.inspect.examples`: :func:`drop_examples`, :func:`selection_examples`,
  :func:`reject_examples` and their HTML;
* :mod:`~pipeline.inspect.whatif`: :func:`what_if`, a replay of the run's decisions with one
  threshold changed;
* :mod:`~pipeline.inspect.compare`: :func:`compare_runs` and its charts;
* :mod:`~pipeline.inspect.html`: :func:`render_report` / :func:`write_report`, the self-contained
  ``report.html`` with sortable, filterable tables.

``from pipeline import inspect as R`` gives all of it (as the notebooks use it).
"""

from __future__ import annotations

from pipeline.inspect.charts import (
    Chart,
    embedding_map,
    plot_cluster_sizes,
    plot_embedding_map,
    plot_flags,
    plot_funnel,
    plot_lengths,
    plot_score_distributions,
    plot_scores_by_source,
)
from pipeline.inspect.compare import (
    Comparison,
    compare_runs,
    plot_compare_counts,
    plot_score_shifts,
    plot_selection_overlap,
)
from pipeline.inspect.examples import (
    drop_examples,
    examples_html,
    reject_examples,
    reject_examples_html,
    selection_examples,
    selection_html,
    selector_score_columns,
)
from pipeline.inspect.html import render_report, report_charts, table_html, write_report
from pipeline.inspect.run import Run, load_run, stage_of_reason
from pipeline.inspect.tables import (
    accounting,
    cluster_table,
    drop_reasons,
    flag_columns,
    params_table,
    reject_reasons,
    score_by_source,
    score_columns,
    score_summary,
    settings_table,
    sources_table,
    stages_table,
)
from pipeline.inspect.whatif import WhatIf, what_if

__all__ = [
    "Chart", "Comparison", "Run", "WhatIf", "accounting", "cluster_table", "compare_runs", "drop_examples",
    "drop_reasons", "embedding_map", "examples_html", "flag_columns", "load_run", "params_table",
    "plot_cluster_sizes", "plot_compare_counts", "plot_embedding_map", "plot_flags", "plot_funnel", "plot_lengths",
    "plot_score_distributions", "plot_score_shifts", "plot_scores_by_source", "plot_selection_overlap",
    "reject_examples", "reject_examples_html", "reject_reasons", "render_report", "report_charts",
    "score_by_source", "score_columns", "score_summary", "selection_examples", "selection_html",
    "selector_score_columns", "settings_table", "sources_table", "stage_of_reason", "stages_table", "table_html",
    "what_if", "write_report",
]
