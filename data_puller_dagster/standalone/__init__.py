"""The library behind `data_puller_dagster.api` and the `data-puller` command: thin doors over sources/,
transform/ and io/router.py, without Dagster (resolve: requests -> feeds and day windows; pipeline:
DataNormalizer, DataPipeline, PullResult; routing: Route, DataRouter, store_window; features: enrich,
build_llm_dataset; progress: the command's progress bars)."""
