"""Peer: datatrove 0.10's multi-stage MinHash dedup at its documented best (the FineWeb recipe):
signatures -> buckets -> clusters -> filter, each a ``LocalPipelineExecutor`` on every core. The input
file is first cut into one Parquet file per task (datatrove parallelises over files). Clusters are
union-find over LSH collisions (no Jaccard check); one document per cluster is kept; kept documents
are written as JSONL, removed ones through the filter's exclusion writer."""

from __future__ import annotations

import glob
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import args, report, split_for_tasks, write_removed  # noqa: E402


def main() -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter

    src, dst, cfg = args()
    bands, rows = cfg.get("bands", 10), cfg.get("rows", 12)
    work, n, tasks, workers = split_for_tasks(src, "datatrove-peer-")
    mc = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)

    def reader() -> ParquetReader:
        return ParquetReader(f"{work}/in", text_key="text", id_key="row")

    common = {"workers": workers, "skip_completed": False}
    LocalPipelineExecutor([reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=mc)],
                          tasks=tasks, logging_dir=f"{work}/logs1", **common).run()
    LocalPipelineExecutor([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=mc)],
                          tasks=mc.num_buckets, logging_dir=f"{work}/logs2", **common).run()
    LocalPipelineExecutor([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=mc)],
                          tasks=1, logging_dir=f"{work}/logs3", **common).run()
    LocalPipelineExecutor([reader(), MinhashDedupFilter(input_folder=f"{work}/remove",
                                                        exclusion_writer=JsonlWriter(f"{work}/removed")),
                           JsonlWriter(f"{work}/kept")], tasks=tasks, logging_dir=f"{work}/logs4", **common).run()
    removed = []
    for f in glob.glob(f"{work}/removed/*.jsonl.gz"):
        with gzip.open(f, "rt") as fh:
            removed += [int(json.loads(line)["id"]) for line in fh]
    write_removed(dst, removed)
    report(rows=n, removed=len(removed), workers=workers, tasks=tasks)


if __name__ == "__main__":
    main()
