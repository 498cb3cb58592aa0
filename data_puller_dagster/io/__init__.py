"""Storage: the declarative router and its destinations (Parquet, DuckDB, Postgres, CSV, JSONL)."""
