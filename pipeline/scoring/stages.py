"""The LM-scoring stages under their config names (registered in :mod:`pipeline.stages`).

============================ ================= ===============================================
config name                  class             main column
============================ ================= ===============================================
``perplexity``               Perplexity        ``ppl``
``ifd``                      IFD               ``ifd``
``deita``                    Deita             ``deita_score``
``judge``                    Judge             ``judge_yes_prob``
``grape``                    Grape             ``grape_best`` / ``grape_loglik`` (global)
``error_uncertainty``        ErrorUncertainty  ``eu_quadrant`` / ``eu_nll`` (global)
============================ ================= ===============================================

Importing this module does not import torch or transformers (the config validator imports it);
the model is loaded on the first row that is not in the score cache.
"""

from __future__ import annotations

from pipeline.scoring.deita import Deita, deita
from pipeline.scoring.error_uncertainty import ErrorUncertainty, error_uncertainty
from pipeline.scoring.grape import Grape, grape
from pipeline.scoring.ifd import IFD, ifd
from pipeline.scoring.judge import Judge, judge
from pipeline.scoring.perplexity import Perplexity, perplexity

__all__ = ["Perplexity", "IFD", "Deita", "Judge", "Grape", "ErrorUncertainty",
           "perplexity", "ifd", "deita", "judge", "grape", "error_uncertainty"]
