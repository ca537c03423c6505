"""Statistics of an evaluation: intervals over seeds, and paired bootstraps over target items.

* Per arm and target, the seeds' scores (each the mean over the target's items) give a mean and a
  95% Student-t interval (``t_{0.975, n-1} * sd / sqrt(n)``); one seed (or the untuned base) has no
  interval.
* Per target, each arm is compared with ``random`` item by item: for item ``i`` the difference is the
  arm's score averaged over its seeds minus random's averaged over random's seeds, and the interval
  is the 2.5/97.5 percentiles of the mean difference over ``n_boot`` resamples of the items (paired:
  the same resampled items for both arms). It measures how sure the difference is across items, not
  across training seeds; the per-seed intervals show the latter.
"""

from __future__ import annotations

import math

import numpy as np


def seed_interval(values: list[float]) -> dict[str, float | int | None]:
    """Mean and 95% t-interval of per-seed values."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = float(v.mean())
    if len(v) < 2:
        return {"mean": m, "lo": None, "hi": None, "n": len(v)}
    from scipy.stats import t

    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return {"mean": m, "lo": m - half, "hi": m + half, "n": len(v)}


def paired_bootstrap(arm: np.ndarray, ref: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``arm - ref`` over items with a 95% percentile interval; ``p_below`` = share of resamples < 0."""
    d = np.asarray(arm, float) - np.asarray(ref, float)
    n = len(d)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1) if n else np.zeros(0)
    return {"diff": float(d.mean()) if n else float("nan"),
            "lo": float(np.percentile(means, 2.5)) if n else float("nan"),
            "hi": float(np.percentile(means, 97.5)) if n else float("nan"),
            "p_below": float((means < 0).mean()) if n else float("nan"), "items": n, "n_boot": n_boot}
