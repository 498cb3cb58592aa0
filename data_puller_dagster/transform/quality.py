"""Data quality of a partition: one documented score in [0, 1] plus the counts behind it.

    data_quality_score = completeness x validity

- completeness = present / expected candles against the market calendar (`gaps.GapReport`), 1.0 when
  the market was closed the whole time (nothing expected, nothing missing).
- validity = 1 - (quarantined + duplicate_conflicts) / rows_in, 1.0 for an empty input. Identical
  duplicates and superseded still-open candles do not lower validity: they are the normal result of
  overlapping fetches, not bad data.

Why a product: either problem alone makes a partition unfit for a dataset (a day with half the candles
missing is as useless as a day with half of them broken), and a product stays in [0, 1], is 1.0 only
for perfect data and falls monotonically with each kind of defect. Consumers gate on it
(`dataset.min_quality`, default 0.9). The counts are reported alongside so nobody has to reverse-
engineer the score.
"""

from __future__ import annotations

from data_puller_dagster.transform.gaps import GapReport
from data_puller_dagster.transform.normalize import NormalizeReport


def data_quality_score(
    *,
    completeness: float,
    rows_in: int,
    quarantined: int,
    duplicate_conflicts: int = 0,
) -> float:
    """completeness x validity, in [0, 1] (see module docstring). Raises ValueError on impossible counts."""
    if not 0.0 <= completeness <= 1.0 + 1e-12:
        raise ValueError(f"completeness must be in [0, 1], got {completeness!r}; pass present/expected candles")
    if rows_in < 0 or quarantined < 0 or duplicate_conflicts < 0 or quarantined + duplicate_conflicts > rows_in:
        raise ValueError(
            f"inconsistent counts rows_in={rows_in}, quarantined={quarantined}, "
            f"duplicate_conflicts={duplicate_conflicts}; bad rows cannot exceed the rows read"
        )
    validity = 1.0 if rows_in == 0 else 1.0 - (quarantined + duplicate_conflicts) / rows_in
    return float(min(1.0, completeness) * validity)


def quality_metadata(report: NormalizeReport, gaps: GapReport | None = None) -> dict[str, int | float | str]:
    """Flat counts + score for Dagster metadata: rows in/out, duplicates, conflicts, quarantined by rule,
    gap segments, missing candles, completeness, score. Without `gaps`, completeness is taken as 1."""
    completeness = gaps.completeness if gaps is not None else 1.0
    md: dict[str, int | float | str] = {
        "rows_in": report.rows_in,
        "rows_out": report.rows_out,
        "duplicates_identical": report.duplicates_identical,
        "duplicate_conflicts": report.duplicate_conflicts,
        "superseded_open": report.superseded_open,
        "quarantined": report.quarantined,
        "still_open": report.still_open,
        "zero_trade_candles": report.zero_trade_candles,
    }
    md.update({f"quarantined/{k}": int(v) for k, v in sorted(report.quarantined_by_rule.items())})
    if gaps is not None:
        md.update(gaps.as_metadata())
    md["data_quality_score"] = data_quality_score(
        completeness=completeness,
        rows_in=report.rows_in,
        quarantined=report.quarantined,
        duplicate_conflicts=report.duplicate_conflicts,
    )
    return md
