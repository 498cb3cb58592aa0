"""Column-wise window arithmetic for the indicators: every column is one window (one UTC day's block),
and every step treats columns independently or element by element, so a column's bits do not depend on
how many columns are computed with it (a day built alone == the same day inside a range).

Pure numpy/pandas; no candle loops (loops run over window offsets only).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def ewm(x: np.ndarray, **kw: float) -> np.ndarray:
    """pandas `ewm(..., adjust=False).mean()` down each column (pandas runs it column by column in C)."""
    return pd.DataFrame(x).ewm(adjust=False, **kw).mean().to_numpy()


def fold(x: np.ndarray, window: int, op: np.ufunc) -> np.ndarray:
    """op over each trailing window of rows, applied in row order: `window` vector steps, no candle loop."""
    m = len(x) - window + 1
    acc = x[:m].copy()
    for j in range(1, window):
        op(acc, x[j : j + m], out=acc)
    return acc


def rolling(x: np.ndarray, window: int, how: str) -> np.ndarray:
    """Trailing `window`-row sum/mean/std(ddof=0)/min/max down each column, NaN until a full window.

    Every window is recomputed from its own rows, added in a fixed order: unlike a running sum (pandas
    keeps one, with a compensation term), the value cannot depend on where the computation started.
    NaN anywhere in a window gives NaN (pandas' min_periods=window). A constant window has a std of
    exactly 0, as in pandas, so Bollinger %b stays NaN on flat prices instead of dividing rounding noise.
    """
    out = np.full(x.shape, np.nan)
    if len(x) < window:
        return out
    if how in ("min", "max"):
        out[window - 1 :] = fold(x, window, np.minimum if how == "min" else np.maximum)
        return out
    total = fold(x, window, np.add)
    if how == "sum":
        out[window - 1 :] = total
        return out
    mean = total / window
    if how == "mean":
        out[window - 1 :] = mean
        return out
    flat = fold(x, window, np.minimum) == fold(x, window, np.maximum)
    m = len(x) - window + 1
    ssq = np.zeros_like(mean)
    for j in range(window):  # second pass: squared deviations from the window's own mean
        dev = x[j : j + m] - mean
        ssq += dev * dev
    out[window - 1 :] = np.where(flat, 0.0, np.sqrt(ssq / window))
    return out


def shift1(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    out[:1] = np.nan
    out[1:] = x[:-1]
    return out


def atr_blocks(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int) -> np.ndarray:
    """Wilder's ATR down each column; see `average_true_range`. The seed is summed row by row (not a
    numpy reduction, whose summation order depends on the array shape) so a column's value does not
    depend on how many columns are computed with it."""
    out = np.full(close.shape, np.nan)
    if len(close) < window:
        return out
    prev = shift1(close)
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))  # fmax skips the NaN prev
    seed = tr[0].copy()
    for j in range(1, window):  # `window` vector additions, not a loop over candles
        seed += tr[j]
    seeded = tr.copy()
    seeded[: window - 1] = np.nan
    seeded[window - 1] = seed / window
    return ewm(seeded, alpha=1.0 / window)


def average_true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray, window: int) -> np.ndarray:
    """Wilder's ATR as `ta.volatility.AverageTrueRange` (to ~1e-12), vectorized, NaN instead of ta's zeros.

    ta seeds with the mean of the first `window` true ranges (the first one is high - low, there is no
    previous close) and then runs atr = (atr * (n - 1) + tr) / n in a Python loop. That recursion is an
    `ewm(alpha=1/n, adjust=False)` started at the seed, which pandas runs in C.
    """
    cols = [np.asarray(a, dtype="float64")[:, None] for a in (high, low, close)]
    return atr_blocks(*cols, window)[:, 0]
