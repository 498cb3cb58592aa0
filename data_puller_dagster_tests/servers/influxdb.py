"""pytest fixtures for a real InfluxDB 1.x server (Debian's `influxdb` package, installed by .ci/run).

`influxdb_server` (session): one `influxd` on free loopback ports (HTTP and the RPC/backup service),
with its meta, data and WAL directories in a temp dir, reporting and every background service the
tests do not need turned off, and HTTP authentication ON (an admin user is created through the
server's own bootstrap rule: the first user may be created without credentials). Authentication is on
so every store test sends credentials the way a production deployment does, and so the
credential-redaction tests can make the server refuse a wrong password. Without `influxd` the tests
skip locally and FAIL with CI=true.

`influxdb_destination` (function): an InfluxDBDestination on a fresh database of that server, dropped
afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ADMIN_USER = "dp_admin"
ADMIN_PASSWORD = "s3cret-" + os.urandom(6).hex()  # per session, never printed
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class InfluxServer:
    url: str
    username: str
    password: str
    log: Path

    def query(self, q: str, db: str | None = None) -> dict:
        """Run InfluxQL as the admin user (POST, so DDL and DELETE work) and return the JSON body."""
        params = {"q": q, **({"db": db} if db else {})}
        r = requests.post(f"{self.url}/query", params=params, auth=(self.username, self.password), timeout=30)
        r.raise_for_status()
        body = r.json()
        for res in body.get("results", []):
            if "error" in res:
                raise RuntimeError(f"InfluxQL {q!r} failed: {res['error']}")
        return body

    def stats(self, module: str = "httpd") -> dict[str, int]:
        """The server's own counters of one module (SHOW STATS), e.g. httpd writeReq / authFail."""
        out: dict[str, int] = {}
        for res in self.query(f"SHOW STATS FOR '{module}'")["results"]:
            for s in res.get("series", []):
                for name, value in zip(s["columns"], s["values"][0], strict=True):
                    out[name] = out.get(name, 0) + int(value)
        return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, http_port: int, rpc_port: int, index: str = "tsi1") -> str:
    return f"""
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root / "meta"}"
  logging-enabled = false
[data]
  dir = "{root / "data"}"
  wal-dir = "{root / "wal"}"
  query-log-enabled = false
  wal-fsync-delay = "0s"
  index-version = "{index}"
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = true
  log-enabled = false
  pprof-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
[shard-precreation]
  enabled = false
[retention]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""


def _start(binary: str, root: Path, index: str = "tsi1") -> tuple[subprocess.Popen, str, Path]:
    """Start influxd and wait for /ping; one retry on other ports if a port was taken meanwhile."""
    last = ""
    for attempt in range(3):
        http_port, rpc_port = _free_port(), _free_port()
        run_dir = root / f"run{attempt}"
        run_dir.mkdir()
        conf = run_dir / "influxdb.conf"
        conf.write_text(_config(run_dir, http_port, rpc_port, index))
        log = run_dir / "influxd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, "-config", str(conf)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/ping", timeout=1).status_code == 204:
                    return proc, url, log
            except requests.RequestException:
                pass
            time.sleep(0.05)
        last = log.read_text(errors="replace")[-2000:]
        _stop(proc)
    raise RuntimeError(f"influxd did not answer /ping within {START_TIMEOUT:.0f}s; its log ends:\n{last}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def influxd_binary() -> str:
    """The influxd binary; skips the test locally and FAILS it under CI=true when it is missing."""
    binary = shutil.which("influxd")
    if binary is None:
        msg = "influxd not installed (apt-get install -y influxdb; .ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{msg}: the InfluxDB store must be tested for real under CI")
        pytest.skip(msg)
    return binary


@contextmanager
def running_influxd(index: str = "tsi1") -> Iterator[InfluxServer]:
    """A fresh influxd with an admin user (`index`: the [data] index-version), stopped afterwards.

    tsi1 by default: InfluxDB 1.6's inmem index loses re-written series on DELETE, which the store
    detects and refuses (tested with an inmem server)."""
    binary = influxd_binary()
    root = Path(tempfile.mkdtemp(prefix="dp_influxd_"))
    proc, url, log = _start(binary, root, index)
    try:
        # With auth on and no user yet, the server accepts exactly this statement without credentials.
        r = requests.post(
            f"{url}/query",
            params={"q": f"CREATE USER {ADMIN_USER} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES"},
            timeout=30,
        )
        r.raise_for_status()
        yield InfluxServer(url, ADMIN_USER, ADMIN_PASSWORD, log)
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def influxdb_server() -> Iterator[InfluxServer]:
    with running_influxd() as server:
        yield server


@pytest.fixture
def influxdb_database(influxdb_server: InfluxServer) -> Iterator[str]:
    """A fresh database on the session server, dropped afterwards."""
    name = f"t{os.getpid()}_{os.urandom(4).hex()}"
    influxdb_server.query(f'CREATE DATABASE "{name}"')
    yield name
    influxdb_server.query(f'DROP DATABASE "{name}"')


@pytest.fixture
def influxdb_destination(influxdb_server: InfluxServer, influxdb_database: str):
    from data_puller_dagster.io.destinations.influxdb_store import InfluxDBDestination

    return InfluxDBDestination(
        url=influxdb_server.url,
        database=influxdb_database,
        username=influxdb_server.username,
        password=influxdb_server.password,
    )
