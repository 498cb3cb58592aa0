"""Normalize + validate (pandera) on 1M Binance raw candles (string prices, as the adapters deliver)."""

from __future__ import annotations

from benchmarks.common import FIXED_NOW, raw_frame, row, timed


def normalize_validate(quick: bool) -> list[dict]:
    from data_puller_dagster.transform.normalize import normalize
    from data_puller_dagster.transform.schemas import validate_normalized

    n, runs = (200_000, 2) if quick else (1_000_000, 5)
    raw = raw_frame(n)
    t_norm, _, res = timed(lambda: normalize(raw, asset_class="crypto", timeframe="1m", now=FIXED_NOW), runs)
    assert res.report.rows_out == n, res.report
    t_val, _, summary = timed(lambda: validate_normalized(res.data), runs)
    assert summary.ok, summary.failures

    def both():
        r = normalize(raw, asset_class="crypto", timeframe="1m", now=FIXED_NOW)
        return validate_normalized(r.data)

    t_both, _, _ = timed(both, runs)
    return [
        row("normalize (string prices)", n, t_norm),
        row("validate (pandera NormalizedModel)", n, t_val),
        row("normalize + validate", n, t_both, target=">= 2M rows/s"),
    ]


CASES = {"normalize_validate": normalize_validate}
