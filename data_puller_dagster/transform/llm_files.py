"""The JSONL split files, their manifest and the dataset card (README.md), streamed and atomic.

Batches are written as they come (memory is one batch), hashed on the fly, into temporary files that
replace the previous files only once everything is written; manifest.json is replaced last, so a
reader that checks the manifest's sha256 never trusts a half-written dataset. Nothing in the manifest
or the card depends on the wall clock or on paths: the same examples give byte-identical files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from data_puller_dagster.io.destinations.staging import staging_token, sweep_local
from data_puller_dagster.transform.llm_card import DatasetCard, render_card
from data_puller_dagster.transform.llm_lines import SCHEMA_VERSION
from data_puller_dagster.transform.llm_tokens import METHOD, estimate_tokens

SPLITS: tuple[str, ...] = ("train", "validation", "test")
EXAMPLE_COLUMNS = ("ts", "symbol", "split", "line")
CARD_FILE = "README.md"


class DatasetInputError(ValueError):
    """The enriched frame, the options or the example batches cannot produce a dataset; names the fix."""


def empty_examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "symbol": pd.Series(dtype="string"),
            "split": pd.Series(dtype="string"),
            "line": pd.Series(dtype="string"),
        }
    )


def _check_batch(frame: pd.DataFrame, state: dict[str, Any]) -> None:
    """Examples must arrive symbol after symbol, each in strictly increasing ts (no repeats, no overlap)."""
    missing = [c for c in EXAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetInputError(f"dataset batch lacks columns {missing}; pass ExampleBatch.frame objects")
    bad = sorted(set(map(str, frame["split"].unique())) - set(SPLITS))
    if bad:
        raise DatasetInputError(f"unknown split(s) {bad} in a dataset batch; splits are {list(SPLITS)}")
    sym = frame["symbol"].astype(str).to_numpy()
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    change = np.flatnonzero(sym[1:] != sym[:-1]) + 1
    runs = np.split(np.arange(len(sym)), change)
    for run in runs:  # one iteration per symbol run in the batch
        s, first_ts = sym[run[0]], ts[run[0]]
        if s == state.get("symbol"):
            ordered = first_ts > state["last_ts"]
        else:
            ordered = s not in state["done"]
            if state.get("symbol") is not None:
                state["done"].add(state["symbol"])
        if not ordered or (len(run) > 1 and not (np.diff(ts[run]) > 0).all()):
            raise DatasetInputError(
                f"dataset batches for {s!r} are out of order or overlap (near {pd.Timestamp(first_ts, tz='UTC')}); "
                "yield each symbol's examples once, in increasing ts, one symbol after another"
            )
        state["symbol"], state["last_ts"] = s, ts[run[-1]]


def _is_dataset_file(stem: str) -> bool:
    return stem in ("manifest.json", CARD_FILE) or stem in {f"{s}.jsonl" for s in SPLITS}


def write_dataset(
    batches: Iterable[pd.DataFrame],
    out_dir: Path,
    *,
    name: str,
    config_hash: str,
    dataset_format: str | None = None,
    extra: Mapping[str, Any] | None = None,
    card: DatasetCard | None = None,
) -> dict[str, Any]:
    """Stream example frames into <out_dir>/{train,validation,test}.jsonl and write manifest.json
    (examples, bytes and estimated tokens per split) and, given a `card`, README.md (the dataset card).

    Batches are written as they come (memory is one batch), hashed on the fly, into temporary files
    that replace the previous files only once everything is written; manifest.json is replaced last, so
    a reader that checks the manifest's sha256 never trusts a half-written dataset. The manifest has no
    wall-clock time: the same examples give byte-identical files *and* manifest. Returns the manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A writer killed mid-write (kill -9, OOM) leaves its temp files (possibly GBs): the next write
    # removes those of dead writers, never a live writer's (same rule as the file stores).
    sweep_local(out_dir, _is_dataset_file)
    token = staging_token()
    tmp = {s: out_dir / f".{s}.jsonl.{token}.tmp" for s in SPLITS}
    stats = {s: {"rows": 0, "bytes": 0, "tokens": 0, "max_tokens": 0, "first_ts": None, "last_ts": None} for s in SPLITS}
    hashers = {s: hashlib.sha256() for s in SPLITS}
    symbols: set[str] = set()
    state: dict[str, Any] = {"symbol": None, "last_ts": None, "done": set()}
    handles = {s: open(tmp[s], "wb") for s in SPLITS}  # noqa: SIM115 - closed in finally
    try:
        for frame in batches:
            if len(frame) == 0:
                continue
            _check_batch(frame, state)
            symbols.update(map(str, frame["symbol"].unique()))
            split = frame["split"].astype(str).to_numpy()
            for s in SPLITS:
                sel = split == s
                if not sel.any():
                    continue
                lines = [ln.encode() for ln in frame["line"].to_numpy()[sel].tolist()]
                offsets = np.zeros(len(lines) + 1, dtype=np.int64)
                np.cumsum([len(b) + 1 for b in lines], out=offsets[1:])
                data = b"\n".join(lines) + b"\n"
                handles[s].write(data)
                hashers[s].update(data)
                tokens = estimate_tokens(data, offsets)
                st = stats[s]
                st["rows"] += int(sel.sum())
                st["bytes"] += len(data)
                st["tokens"] += int(tokens.sum())
                st["max_tokens"] = max(st["max_tokens"], int(tokens.max()))
                tss = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8[sel]
                lo, hi = pd.Timestamp(int(tss.min()), tz="UTC"), pd.Timestamp(int(tss.max()), tz="UTC")
                st["first_ts"] = lo if st["first_ts"] is None else min(st["first_ts"], lo)
                st["last_ts"] = hi if st["last_ts"] is None else max(st["last_ts"], hi)
        for h in handles.values():
            h.flush()
            os.fsync(h.fileno())
    except BaseException:
        for s in SPLITS:
            handles[s].close()
            tmp[s].unlink(missing_ok=True)
        raise
    for h in handles.values():
        h.close()

    def iso(t: pd.Timestamp | None) -> str | None:
        return None if t is None else t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")

    files = {
        s: {
            "path": f"{s}.jsonl",
            "rows": stats[s]["rows"],
            "bytes": stats[s]["bytes"],
            "estimated_tokens": stats[s]["tokens"],
            "max_estimated_tokens_per_example": stats[s]["max_tokens"],
            "sha256": hashers[s].hexdigest(),
            "first_ts": iso(stats[s]["first_ts"]),
            "last_ts": iso(stats[s]["last_ts"]),
        }
        for s in SPLITS
    }
    firsts = [v["first_ts"] for v in stats.values() if v["first_ts"] is not None]
    lasts = [v["last_ts"] for v in stats.values() if v["last_ts"] is not None]
    manifest: dict[str, Any] = {
        "name": name,
        "schema_version": SCHEMA_VERSION,
        "format": dataset_format,
        "config_hash": config_hash,
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        "total_rows": sum(stats[s]["rows"] for s in SPLITS),
        "date_range": {
            "start": iso(min(firsts)) if firsts else None,
            "end": iso(max(lasts)) if lasts else None,
        },
        "symbols": sorted(symbols),
        "files": files,
        "token_estimate": METHOD,
        **(card.manifest_fields() if card is not None else {}),
        **({"extra": dict(extra)} if extra else {}),
    }
    for s in SPLITS:
        os.replace(tmp[s], out_dir / f"{s}.jsonl")
    if card is not None:
        _replace(out_dir, CARD_FILE, token, render_card(card, manifest).encode())
    blob = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    _replace(out_dir, "manifest.json", token, blob)
    return manifest


def _replace(out_dir: Path, name: str, token: str, blob: bytes) -> None:
    """Write `name` atomically (temp file, fsync, rename)."""
    tmp = out_dir / f".{name}.{token}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / name)
