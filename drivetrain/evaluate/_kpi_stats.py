"""The evaluation's statistics on the summed moments: cluster-robust means and Welch intervals, CUPED,
delta-method ratios, latency percentiles from the histogram and the sample ratio test."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import special

from drivetrain.evaluate._figures import Effect, Ratio, SampleRatio
from drivetrain.evaluate._kpi_sql import LATENCY_BINS_PER_E


def _mean_var(a: Arm, i: int) -> tuple[float | None, float | None]:
    """Metric ``i``'s mean in one arm and the cluster-robust variance of that mean:
    G / (G - 1) * sum_g (S_g - mean n_g)^2 / N^2 over the arm's G clusters (a cluster's decisions summed:
    n_g of them, S_g their total), which is var / N when every cluster holds one decision."""
    n, g = a["n"], a["g"]
    if n < 1:
        return None, None
    mean = float(a[f"s{i}"]) / float(n)
    if g < 2:
        return mean, None
    squares = a[f"q{i}"] - 2.0 * mean * a[f"nb{i}"] + mean * mean * a["nn"]
    return mean, g / (g - 1) * max(squares, 0.0) / (n * n)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _welch(m1: float | None, a: float | None, g1: float, m0: float | None, b: float | None, g0: float,
           level: float) -> Effect:
    """The difference of two arm means whose variances are ``a`` and ``b``, with Welch-Satterthwaite's
    degrees of freedom over ``g1`` and ``g0`` clusters."""
    m1, a, m0, b = _float(m1), _float(a), _float(m0), _float(b)
    if m1 is None or m0 is None:
        return Effect(m1, m0, None, None, None, None)
    diff = m1 - m0
    policy_se = math.sqrt(a) if a is not None else None
    if a is None or b is None:
        return Effect(m1, m0, diff, None, None, None, policy_se)
    se = math.sqrt(a + b)
    if se == 0.0:
        return Effect(m1, m0, diff, diff, diff, 0.0, policy_se)
    df = (a + b) ** 2 / ((a * a / (g1 - 1) if a else 0.0) + (b * b / (g0 - 1) if b else 0.0))
    half = float(special.stdtrit(df, 0.5 + level / 2)) * se  # stats.t.ppf's own function, without its 0.15 ms of checks
    return Effect(m1, m0, diff, diff - half, diff + half, se, policy_se)


#: One arm's summed moments by name (``n``, ``g``, ``s0``, ``q0``, ...), as :func:`_arm_sums` gives them
#: for a slice: linear sums over decisions, products over the slice's clusters.
Arm = Mapping[str, float]


def _effect(arms: tuple[Arm, Arm], i: int, level: float) -> Effect:
    p, h = arms
    mp, vp = _mean_var(p, i)
    mh, vh = _mean_var(h, i)
    return _welch(mp, vp, p["g"], mh, vh, h["g"], level)


def _cuped(arms: tuple[Arm, Arm], p_cov: int, level: float) -> Effect:
    """Objective difference adjusted by the pooled within-arm regression on the covariates, fitted on the
    clusters' centred sums (the slope that minimizes the cluster-robust variance; with one decision per
    cluster, the per-decision regression)."""
    if p_cov == 0 or min(arms[0]["g"], arms[1]["g"]) < 2:
        return _effect(arms, 0, level)
    centred = []
    for a in arms:
        n, nn = a["n"], a["nn"]
        sx = np.array([a[f"x{j}"] for j in range(p_cov)])
        nx = np.array([a[f"nx{j}"] for j in range(p_cov)])
        sxx = np.empty((p_cov, p_cov))
        for j in range(p_cov):
            for k in range(j, p_cov):
                sxx[j, k] = sxx[k, j] = a[f"xx{j}_{k}"]
        sxy = np.array([a[f"xy{j}"] for j in range(p_cov)])
        xbar, ybar = sx / n, a["s0"] / n
        # sums over clusters of (X_g - xbar n_g)(X_g - xbar n_g)', (X_g - xbar n_g)(S_g - ybar n_g), ...
        cxx = sxx - np.outer(xbar, nx) - np.outer(nx, xbar) + nn * np.outer(xbar, xbar)
        cxy = sxy - xbar * a["nb0"] - ybar * nx + nn * xbar * ybar
        cyy = max(a["q0"] - 2.0 * ybar * a["nb0"] + nn * ybar * ybar, 0.0)
        centred.append((n, a["g"], xbar, ybar, cxx, cxy, cyy))
    pooled_xx = centred[0][4] + centred[1][4]
    pooled_xy = centred[0][5] + centred[1][5]
    theta = np.linalg.lstsq(pooled_xx, pooled_xy, rcond=None)[0]
    n_all = centred[0][0] + centred[1][0]
    xbar_all = (centred[0][0] * centred[0][2] + centred[1][0] * centred[1][2]) / n_all
    means, variances = [], []
    for n, g, xbar, ybar, cxx, cxy, cyy in centred:
        means.append(float(ybar - theta @ (xbar - xbar_all)))
        variances.append(g / (g - 1) * max(float(cyy - 2 * theta @ cxy + theta @ cxx @ theta), 0.0) / (n * n))
    return _welch(means[0], variances[0], centred[0][1], means[1], variances[1], centred[1][1], level)


def _ratio(arms: tuple[Arm, Arm], i: int, level: float) -> Ratio:
    """(mean_p(b) - mean_h(b)) / (mean_p(y) - mean_h(y)) with the delta method's (cluster-robust) variance."""
    p, h = arms
    if min(p["g"], h["g"]) < 2:
        return Ratio(None, None, None, None)
    db = p[f"s{i}"] / p["n"] - h[f"s{i}"] / h["n"]
    dy = p["s0"] / p["n"] - h["s0"] / h["n"]
    if dy == 0.0:
        return Ratio(None, None, None, None)
    r = db / dy
    var_b = var_y = cov = 0.0
    for a in arms:
        n, g, nn = a["n"], a["g"], a["nn"]
        mb, my = a[f"s{i}"] / n, a["s0"] / n
        scale = g / (g - 1) / (n * n)
        var_b += scale * (a[f"q{i}"] - 2 * mb * a[f"nb{i}"] + mb * mb * nn)
        var_y += scale * (a["q0"] - 2 * my * a["nb0"] + my * my * nn)
        cov += scale * (a[f"c{i}"] - mb * a["nb0"] - my * a[f"nb{i}"] + mb * my * nn)
    var_r = max(var_b - 2 * r * cov + r * r * var_y, 0.0) / (dy * dy)
    se = math.sqrt(var_r)
    z = float(special.ndtri(0.5 + level / 2))  # stats.norm.ppf without its checks (once per slice)
    return Ratio(float(r), float(r - z * se), float(r + z * se), se)


def _percentile(bins: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    """The q-quantile (NumPy's linear definition) of values known only by their log-scale bin: each order
    statistic is placed inside its bin (spread evenly on the log scale), so it, and the interpolation
    between two of them, is at most one bin width (1%) off the exact figure."""
    total = int(counts.sum())
    if total == 0:
        return None
    cum = np.cumsum(counts)

    def order_statistic(rank: int) -> float:
        at = int(np.searchsorted(cum, rank, side="right"))
        before = cum[at - 1] if at else 0
        return math.exp((bins[at] + (rank - before + 0.5) / counts[at]) / LATENCY_BINS_PER_E)

    rank = q * (total - 1)
    low = int(math.floor(rank))
    lo = order_statistic(low)
    if low + 1 >= total:
        return lo
    return lo + (rank - low) * (order_statistic(low + 1) - lo)


def _share(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _sample_ratio(holdout_units: int, policy_units: int, share: float, alpha: float) -> SampleRatio:
    total = holdout_units + policy_units
    if total == 0 or share <= 0.0:
        return SampleRatio(holdout_units, policy_units, share, _share(holdout_units, total), None, None, None)
    expected = np.array([share, 1.0 - share]) * total
    observed = np.array([holdout_units, policy_units], dtype=np.float64)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    p = float(special.chdtrc(1, chi2))  # stats.chi2.sf(chi2, df=1)
    return SampleRatio(holdout_units, policy_units, share, holdout_units / total, chi2, p, p < alpha)
