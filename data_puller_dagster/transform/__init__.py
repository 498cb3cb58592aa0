"""Plain pandas transforms (no Dagster): normalize, validate, gaps, resample, indicators, datasets."""
