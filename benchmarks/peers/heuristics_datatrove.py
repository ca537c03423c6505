"""Peer: datatrove 0.10's Gopher filters as a datatrove pipeline runs them -
``ParquetReader -> GopherRepetitionFilter -> GopherQualityFilter -> JsonlWriter`` (default thresholds,
English: spaCy's ``blank("en")`` word tokenizer), a ``LocalPipelineExecutor`` on every core. The input
file (one document per row: the row's assistant turns) is first cut into one Parquet file per task
(datatrove parallelises over files); that is inside the timed wall."""

from __future__ import annotations

import glob
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import args, report, split_for_tasks  # noqa: E402


def main() -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    src, _dst, _ = args()
    work, n, tasks, workers = split_for_tasks(src, "datatrove-heur-")
    LocalPipelineExecutor([ParquetReader(f"{work}/in", text_key="text", id_key="row"), GopherRepetitionFilter(),
                           GopherQualityFilter(), JsonlWriter(f"{work}/kept")],
                          tasks=tasks, workers=workers, logging_dir=f"{work}/logs", skip_completed=False).run()
    kept = 0
    for f in glob.glob(f"{work}/kept/*.jsonl.gz"):
        with gzip.open(f, "rt") as fh:
            kept += sum(1 for _ in fh)
    report(rows=n, dropped=n - kept, workers=workers, tasks=tasks)


if __name__ == "__main__":
    main()
