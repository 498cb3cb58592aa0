"""The README's "backfill a year of one symbol" command, run as a user runs it (bash, real instance).

Dagster 1.13 has no `dagster asset backfill`, and `dagster job backfill --from A --to B` submits a job
backfill of every multi-partition key between A and B in key order (one run per day x symbol, both
symbols). The README therefore submits an *asset* backfill through Dagster's own GraphQL CLI with a
partition range per asset: on a MultiPartitionsDefinition a range is a rectangle (days x symbols), so
`2024-01-01|BTCUSDT..2024-12-31|BTCUSDT` is exactly BTCUSDT's year, and the assets' multi_run backfill
policy makes the daemon run it as ranged runs of `runs.max_partitions_per_run` days.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pandas as pd

REPO = Path(__file__).resolve().parents[1]

# Verbatim from README.md, "Running for real" > "Backfilling a year".
README_COMMAND = r"""
export FROM='2024-01-01|BTCUSDT' TO='2024-12-31|BTCUSDT'
ASSETS=$(dagster asset list -m data_puller_dagster.definitions --select 'group:crypto and not key:"crypto/llm_dataset*"')
VARS=$(python -c 'import json, os, sys; r = {"range": {"start": os.environ["FROM"], "end": os.environ["TO"]}}; print(json.dumps({"p": {"title": os.environ["FROM"] + " to " + os.environ["TO"], "partitionsByAssets": [{"assetKey": {"path": k.split("/")}, "partitions": r} for k in sys.argv[1:]]}}))' $ASSETS)
dagster-graphql -m data_puller_dagster.definitions -v "$VARS" -t 'mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }'
"""


def test_readme_backfill_command_submits_one_symbols_year_as_ranged_runs(tmp_path):
    assert README_COMMAND.strip() in (REPO / "README.md").read_text()  # the test runs what the README says
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DATA_PULLER_CONFIG": str(REPO / "data_puller.yaml"),
        "DATA_PULLER_HOME": str(tmp_path / "data"),
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", README_COMMAND], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LaunchBackfillSuccess" in proc.stdout, proc.stdout[-3000:]

    from data_puller_dagster.config import load_config
    from data_puller_dagster.definitions import build_definitions

    cfg = load_config(REPO / "data_puller.yaml")
    crypto = next(f for f in cfg.feeds if f.name == "crypto")
    assert len(crypto.symbol_keys) > 1, "the shipped config must have a second symbol for this test to mean much"
    defs = build_definitions(cfg)
    job_assets = defs.resolve_job_def("crypto_pipeline").asset_layer.selected_asset_keys

    with dg.DagsterInstance.from_config(str(home)) as inst:
        backfills = inst.get_backfills()
    assert len(backfills) == 1
    data = backfills[0].asset_backfill_data
    assert data is not None, "a job backfill runs one partition per run; an asset backfill is expected"
    subset = data.target_subset
    assert set(subset.asset_keys) == set(job_assets)
    expected = {f"{d:%Y-%m-%d}|BTCUSDT" for d in pd.date_range("2024-01-01", "2024-12-31", freq="D")}
    for key in job_assets:
        assert set(subset.get_partitions_subset(key).get_partition_keys()) == expected, key

    # The daemon splits it by each asset's policy: 366 days in ranged runs of max_partitions_per_run.
    graph = defs.resolve_asset_graph()
    size = cfg.runs.max_partitions_per_run
    for key in job_assets:
        policy = graph.get(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == size, key
    assert math.ceil(366 / size) == 12
