"""Volume profile of each example's window: volume by price bucket, point of control, value area.

Definitions (the test recomputes them independently):
- Window: the `lookback` candles ending with the example's current candle (all known at prediction
  time). Buckets: `buckets` equal-width price ranges between the window's lowest low and highest high.
- A candle's volume is spread uniformly over its own [low, high] range, so a bucket gets the share of
  the candle's range it overlaps; a candle with high == low puts all its volume in the bucket holding
  that price (the top bucket includes the window's high). A flat window puts everything in bucket 0.
- Point of control (POC): the bucket with the most volume (the lowest such bucket on a tie), written
  as its mid price. Value area: starting from the POC, add the neighbouring bucket with more volume
  (the upper one on a tie) until at least 70 % of the window's volume is inside; VAL / VAH are the low
  edge of its lowest and the high edge of its highest bucket.
- Null when the window's volume is 0 or unknown (forex feeds have no volume at all).

Vectorized: examples are rows of E x N matrices; the loops run over window offsets (`lookback` vector
steps, adding candles in a fixed order so an example's numbers do not depend on how many examples are
computed with it: day by day == one run, bit for bit) and over buckets for the value area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALUE_AREA = 0.70


@dataclass(frozen=True)
class Profile:
    """Per example (length E): price range, POC, value area; `share` is E x N (fractions of volume)."""

    low: np.ndarray
    high: np.ndarray
    poc: np.ndarray
    va_low: np.ndarray
    va_high: np.ndarray
    share: np.ndarray
    valid: np.ndarray  # False: null profile (no volume in the window)


def volume_profile(
    high: np.ndarray, low: np.ndarray, volume: np.ndarray, ends: np.ndarray, lookback: int, buckets: int
) -> Profile:
    """Profiles of the windows [end - lookback + 1, end] of one symbol's ts-ordered candle arrays."""
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and int(ends.min()) < lookback - 1:
        raise ValueError(f"a window ending at row {int(ends.min())} has fewer than {lookback} candles")
    e = len(ends)
    pos = ends[:, None] - (lookback - 1) + np.arange(lookback)  # E x L, oldest first
    h, lo, v = high[pos], low[pos], volume[pos]
    wlo, whi = lo.min(axis=1), h.max(axis=1)  # exact whatever the order
    step = (whi - wlo) / buckets
    edges = wlo[:, None] + step[:, None] * np.arange(buckets + 1)  # E x (N + 1)
    edges[:, -1] = whi
    lower, upper = edges[:, :-1], edges[:, 1:]
    vol = np.zeros((e, buckets))
    total = np.zeros(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(lookback):  # window offsets, not candles: E x N per step
            hj, lj, vj = h[:, j, None], lo[:, j, None], v[:, j]
            rng = hj - lj
            overlap = np.clip(hj, lower, upper) - np.clip(lj, lower, upper)
            spread = np.where(rng > 0, overlap / rng, 0.0)
            point = np.where(step > 0, np.floor((lj[:, 0] - wlo) / step), 0.0)
            at = np.clip(point, 0, buckets - 1).astype(np.int64)
            spread[np.arange(e), at] += np.where(rng[:, 0] > 0, 0.0, 1.0)
            vol += spread * vj[:, None]
            total += vj
    valid = np.isfinite(total) & (total > 0)
    share = np.where(valid[:, None], vol / np.where(valid, total, 1.0)[:, None], np.nan)
    poc = np.argmax(np.where(valid[:, None], vol, 0.0), axis=1)
    lo_b, hi_b = poc.copy(), poc.copy()
    rows = np.arange(e)
    inside = vol[rows, poc]
    target = VALUE_AREA * total
    for _ in range(buckets - 1):  # at most N - 1 expansions; each vectorized over examples
        grow = valid & (inside < target) & ((lo_b > 0) | (hi_b < buckets - 1))
        if not grow.any():
            break
        up = np.where(hi_b < buckets - 1, vol[rows, np.minimum(hi_b + 1, buckets - 1)], -1.0)
        dn = np.where(lo_b > 0, vol[rows, np.maximum(lo_b - 1, 0)], -1.0)
        take_up = grow & (up >= dn)
        take_dn = grow & ~take_up
        inside = inside + np.where(take_up, up, 0.0) + np.where(take_dn, dn, 0.0)
        hi_b = hi_b + take_up
        lo_b = lo_b - take_dn
    nan = np.where(valid, 0.0, np.nan)
    return Profile(
        low=wlo + nan,
        high=whi + nan,
        poc=(lower[rows, poc] + upper[rows, poc]) / 2 + nan,
        va_low=lower[rows, lo_b] + nan,
        va_high=upper[rows, hi_b] + nan,
        share=share,
        valid=valid,
    )
