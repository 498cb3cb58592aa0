"""A dataset writer killed mid-write (kill -9) leaves temp files of its splits; the next write removes
them, so repeated crashes cannot pile up (possibly GB-sized) debris next to the dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

from data_puller_dagster.transform.llm_dataset import EXAMPLE_COLUMNS, write_dataset

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pandas as pd
    from data_puller_dagster.transform.llm_dataset import EXAMPLE_COLUMNS, write_dataset

    def batches():
        ts = pd.date_range("2024-01-01", periods=3, freq="1h", tz="UTC")
        frame = pd.DataFrame({c: [None] * 3 for c in EXAMPLE_COLUMNS})
        frame["symbol"], frame["ts"], frame["split"] = "BTCUSDT", ts, ["train", "validation", "test"]
        frame["line"] = ['{"crashed": true}'] * 3
        yield frame
        print("staged", flush=True)
        time.sleep(600)  # killed here, temp files open

    write_dataset(batches(), Path(sys.argv[1]), name="t", config_hash="x")
    """
)


def _frame() -> pd.DataFrame:
    ts = pd.date_range("2024-02-01", periods=6, freq="1h", tz="UTC")
    frame = pd.DataFrame({c: [None] * 6 for c in EXAMPLE_COLUMNS})
    frame["symbol"], frame["ts"] = "BTCUSDT", ts
    frame["split"] = ["train"] * 4 + ["validation", "test"]
    frame["line"] = [f'{{"i": {i}}}' for i in range(6)]
    return frame


FINAL = {"manifest.json", "test.jsonl", "train.jsonl", "validation.jsonl"}


def _temps(d: Path) -> list[str]:
    """Everything in the dataset directory that is not one of its final files."""
    return sorted(p.name for p in d.iterdir() if p.name not in FINAL)


def test_killed_dataset_writer_leaves_no_growing_debris(tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "crypto" / "llm_1h"
    for _cycle in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "staged"
        assert len(_temps(out)) == 3  # one open temp file per split
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert len(_temps(out)) == 3  # the crash left them

        manifest = write_dataset([_frame()], out, name="t", config_hash="h")
        assert _temps(out) == []  # the next write removed the dead writer's files
        assert manifest["rows"] == {"train": 4, "validation": 1, "test": 1}
        assert (out / "train.jsonl").read_text().splitlines() == [f'{{"i": {i}}}' for i in range(4)]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
