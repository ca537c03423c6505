"""The one error type of ``curate evaluate``: bad input, named before any training starts."""

from __future__ import annotations


class EvaluationError(ValueError):
    """An evaluation that cannot run (an arm smaller than the budget, a target with no usable rows, a
    model that does not load, a budget that does not fit the sequence length); the message says which."""
