"""Paired comparisons over seeds: mean difference, Student-t 95 % confidence interval, verdict.

Two conditions run with the same seeds (same labeled tiles, same segmenter initialization) give
one difference per seed; the interval is mean +- t_{0.975, n-1} * sd / sqrt(n). An interval that
holds 0 is reported as "no significant difference" (that is a result, not a failure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

NOT_SIGNIFICANT = "no significant difference"


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value, e.g. 2.776 for 95 % and 4 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2.0, dof))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """{"n", "mean", "std" (ddof 1), "ci": [low, high]} of `values`; std and ci None for n < 2."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = math.fsum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci": [mean - half, mean + half]}


def paired_difference(
    a: Mapping[Any, float], b: Mapping[Any, float], confidence: float = 0.95
) -> dict[str, Any]:
    """a - b over the seeds both have: {"seeds", "differences", "n", "mean", "std", "ci",
    "verdict"}. verdict: "significant gain" / "significant loss" (of a over b) when the interval excludes 0, else
    NOT_SIGNIFICANT; "one seed: no interval" for n = 1."""
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds:
        raise ValueError("paired_difference: no seed in common")
    differences = [float(a[s]) - float(b[s]) for s in seeds]
    out = {"seeds": seeds, "differences": differences, **mean_ci(differences, confidence)}
    out["confidence"] = confidence
    out["verdict"] = verdict(out["ci"])
    return out


def verdict(ci: Sequence[float] | None) -> str:
    if ci is None:
        return "one seed: no interval"
    low, high = ci
    if low > 0:
        return "significant gain"
    if high < 0:
        return "significant loss"
    return NOT_SIGNIFICANT


def format_difference(diff: Mapping[str, Any], scale: float = 100.0) -> str:
    """ "+1.2 [-0.5, +2.9]: no significant difference" (values times `scale`)."""
    mean = scale * diff["mean"]
    if diff["ci"] is None:
        return f"{mean:+.1f} (one seed: no interval)"
    low, high = (scale * v for v in diff["ci"])
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]: {diff['verdict']}"


def format_mean_std(stat: Mapping[str, Any] | None, scale: float = 100.0) -> str:
    """A `mean_ci` result as "mean +- std" in percent ("-" when missing; no std for n = 1)."""
    if not stat:
        return "-"
    std = "" if stat["std"] is None else f" +- {scale * stat['std']:.1f}"
    return f"{scale * stat['mean']:.1f}{std}"
