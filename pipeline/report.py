"""Deprecated alias of :mod:`pipeline.inspect` (the run loader, tables, charts, examples, what-if,
comparison and HTML report now live there, one module per concern). Kept so that existing
``from pipeline import report`` / ``from pipeline.report import write_report`` keep working."""

from pipeline.inspect import *  # noqa: F403
from pipeline.inspect import __all__  # noqa: F401
