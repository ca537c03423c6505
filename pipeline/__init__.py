"""sft-curate: composable curation stages for instruction-tuning data.

Importing this package loads no model library; stages import torch/faiss/transformers when used.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # lazily, so that ``import pipeline`` stays light
    if name == "canonicalize":
        from pipeline.frames import canonicalize

        return canonicalize
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = ["canonicalize", "__version__"]
