"""Curation stages, one module each, and the registry that names them for configs.

``from pipeline.stages import length`` gives the plain function form of a stage
(``length(table, min_response_tokens=8)``), for every config name (``perplexity``, ``select_top_k``,
``kmq``, ...); ``help(length)`` lists its params. :func:`get_stage` gives the class for a config name.
Modules are imported lazily so that ``import pipeline`` never pulls in torch or faiss.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

#: config name -> "module:Class". Selectors (pipeline.select) are stages too.
REGISTRY: dict[str, str] = {
    "length": "pipeline.stages.length_filter:Length",
    "heuristics": "pipeline.stages.heuristic_filter:Heuristics",
    "exact_dedup": "pipeline.stages.exact:ExactDedup",
    "minhash_dedup": "pipeline.stages.minhash:MinHashDedup",
    "decontaminate": "pipeline.stages.decontam:Decontaminate",
    "embed": "pipeline.stages.embedding:Embed",
    "semantic_dedup": "pipeline.stages.semdedup:SemanticDedup",
    "cluster": "pipeline.stages.clustering:Cluster",
    "perplexity": "pipeline.scoring.stages:Perplexity",
    "ifd": "pipeline.scoring.stages:IFD",
    "deita": "pipeline.scoring.stages:Deita",
    "judge": "pipeline.scoring.stages:Judge",
    "grape": "pipeline.scoring.stages:Grape",
    "error_uncertainty": "pipeline.scoring.stages:ErrorUncertainty",
    "select_random": "pipeline.select.baseline:RandomSelect",
    "select_top_k": "pipeline.select.baseline:TopKSelect",
    "long_is_more": "pipeline.select.long_is_more:LongIsMore",
    "kmq": "pipeline.select.kmq:KMQ",
    "repr_filter": "pipeline.select.repr_filter:ReprFilter",
    "rds_plus": "pipeline.select.rds:RDSPlus",
    "ds2": "pipeline.select.ds2:DS2",
}

#: plain-function names exported from this package -> "module:function", one per config name (selectors
#: and LM-scoring stages included), so ``from pipeline.stages import perplexity, select_top_k`` works.
#: Module names differ from function names on purpose: an imported submodule would otherwise shadow
#: the function. Each function's signature and docstring list the stage's params
#: (:func:`pipeline.stages.functions.stage_function`).
FUNCTIONS: dict[str, str] = {
    "length": "pipeline.stages.length_filter:length",
    "heuristics": "pipeline.stages.heuristic_filter:heuristics",
    "exact_dedup": "pipeline.stages.exact:exact_dedup",
    "minhash_dedup": "pipeline.stages.minhash:minhash_dedup",
    "decontaminate": "pipeline.stages.decontam:decontaminate",
    "embed": "pipeline.stages.embedding:embed",
    "semantic_dedup": "pipeline.stages.semdedup:semantic_dedup",
    "cluster": "pipeline.stages.clustering:cluster",
    "perplexity": "pipeline.scoring.perplexity:perplexity",
    "ifd": "pipeline.scoring.ifd:ifd",
    "deita": "pipeline.scoring.deita:deita",
    "judge": "pipeline.scoring.judge:judge",
    "grape": "pipeline.scoring.grape:grape",
    "error_uncertainty": "pipeline.scoring.error_uncertainty:error_uncertainty",
    "select_random": "pipeline.select.baseline:select_random",
    "select_top_k": "pipeline.select.baseline:select_top_k",
    "long_is_more": "pipeline.select.long_is_more:long_is_more",
    "kmq": "pipeline.select.kmq:kmq",
    "repr_filter": "pipeline.select.repr_filter:repr_filter",
    "rds_plus": "pipeline.select.rds:rds_plus",
    "ds2": "pipeline.select.ds2:ds2",
}


def _load(ref: str) -> Any:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def available_stages() -> list[str]:
    """Stage names whose module is present in this install."""
    return [name for name, ref in REGISTRY.items() if _present(ref.partition(":")[0])]


def get_stage(name: str) -> type:
    """The stage class registered under ``name``; ValueError naming the allowed names otherwise."""
    ref = REGISTRY.get(name)
    if ref is None or not _present(ref.partition(":")[0]):
        raise ValueError(f"unknown stage {name!r}; allowed: {', '.join(available_stages())}")
    return _load(ref)


def __getattr__(name: str) -> Any:
    if name in FUNCTIONS:
        return _load(FUNCTIONS[name])
    raise AttributeError(f"module 'pipeline.stages' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *FUNCTIONS})


__all__ = ["REGISTRY", "available_stages", "get_stage", *FUNCTIONS]
