"""Summary statistics of a metric over seeds: mean, sample standard deviation and the 95%
confidence interval of the mean from Student's t distribution.

With n seeds the interval is ``mean ± t(0.975, n - 1) · std / sqrt(n)``, ``std`` the sample
standard deviation (``ddof=1``). A single seed has no spread: its std is 0 and its interval is
undefined (NaN), and the tables say so instead of printing a zero-width interval.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for n == 1
    ci_low: float  # NaN for n == 1
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = math.fsum(vals) / n
    if n == 1:
        return Summary(1, mean, 0.0, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def format_cell(s: Summary, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std [ci_low, ci_high]`` in percent (``scale``); a single seed prints its value."""
    if s.n == 1:
        return f"{scale * s.mean:.{digits}f}"
    return (f"{scale * s.mean:.{digits}f} ± {scale * s.std:.{digits}f} "
            f"[{scale * s.ci_low:.{digits}f}, {scale * s.ci_high:.{digits}f}]")
