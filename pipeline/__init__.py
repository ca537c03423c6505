"""sft-curate: composable curation stages for instruction-tuning data.

Importing this package loads no model library; stages import torch/faiss/transformers when used.
"""

__version__ = "0.1.0"
