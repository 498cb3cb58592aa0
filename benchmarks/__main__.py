"""`python -m benchmarks [--quick] [--only NAME ...]`: every measurement in its own subprocess, one table.

Peak RSS is the child's own ru_maxrss (fake servers run in separate processes and are not counted).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = ["pull", "normalize", "enrich", "storage", "dataset", "e2e", "orchestration", "cli", "daemon", "freqtrade", "stream", "scale_out"]
RESULTS = Path(__file__).parent / "results"


def cases(only: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for m in MODULES:
        if only and not any(o == m or o.startswith(m + ".") for o in only):
            continue
        mod = importlib.import_module(f"benchmarks.{m}")
        out.extend((m, c) for c in mod.CASES)
    return out


def child(module: str, case: str, quick: bool, out: str) -> None:
    mod = importlib.import_module(f"benchmarks.{module}")
    rows = mod.CASES[case](quick)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for r in rows:
        r.setdefault("peak_rss_mb", rss_mb)
    Path(out).write_text(json.dumps(rows, default=str))


def fmt_rate(v: float) -> str:
    if v != v:  # NaN
        return "-"
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k" if v >= 1e3 else f"{v:.1f}"


def table(rows: list[dict]) -> str:
    head = "| benchmark | rows | median s | rows/s | peak RSS MB | target | note |\n|---|---:|---:|---:|---:|---|---|"
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['benchmark']} | {r['rows']:,} | {r['seconds']:.3f} | {fmt_rate(r['rows_per_s'])} | "
            f"{r['peak_rss_mb']:.0f} | {r.get('target', '')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024**2:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, one or two runs (a smoke test)")
    ap.add_argument("--only", nargs="*", default=None, help="module or module.case names to run")
    ap.add_argument("--out", default=str(RESULTS / "latest.md"))
    ap.add_argument("--child", nargs=3, metavar=("MODULE", "CASE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.quick, a.child[2])
        return
    todo = [(m, c) for m, c in cases(a.only) if not a.only or m in a.only or f"{m}.{c}" in a.only]
    t_all = time.perf_counter()
    rows: list[dict] = []
    for m, c in todo:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "benchmarks", "--child", m, c, out] + (["--quick"] if a.quick else [])
        proc = subprocess.run(cmd, check=False, stderr=subprocess.PIPE, text=True)  # Dagster logs a lot
        took = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            rows.append({"benchmark": f"{m}.{c}", "rows": 0, "seconds": took, "rows_per_s": float("nan"),
                         "peak_rss_mb": float("nan"), "target": "", "note": f"FAILED (exit {proc.returncode})"})
        else:
            rows.extend(json.loads(Path(out).read_text()))
        Path(out).unlink(missing_ok=True)
        print(f"[{m}.{c}] {took:.1f}s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all
    text = table(rows)
    header = (
        f"# Benchmark results{' (--quick)' if a.quick else ''}\n\n"
        f"- machine: {machine()}\n- total wall time: {total:.0f} s\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        "- caveat: the 2 cores may be shared with other work (e.g. a test suite) while measuring\n\n"
    )
    print(text)
    print(f"\ntotal {total:.0f} s")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(header + text + "\n")


if __name__ == "__main__":
    main()
