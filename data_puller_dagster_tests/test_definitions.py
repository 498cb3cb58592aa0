"""The code location loads: what `dagster dev` and the daemon import."""

from __future__ import annotations

import dagster as dg


def test_definitions_load():
    from data_puller_dagster.definitions import defs

    dg.Definitions.validate_loadable(defs)
