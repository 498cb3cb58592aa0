"""GatedBinance: FakeBinance whose klines answers wait behind a gate the test opens.

Why a gate and not a fixed latency: a test that needs a run *in flight* (a sensor ticking while a run
is STARTED, or a run worker killed mid-step) must know the step is inside a provider request and keep it
there until it is done looking; `wait_for_request` blocks until a klines request arrived, and the
request is answered (normally, from the served series) only once `open()` is called. Kept in its own
module so fakes/binance.py stays as it is.
"""

from __future__ import annotations

import threading
import time

from data_puller_dagster_tests.fakes.binance import FakeBinance
from data_puller_dagster_tests.fakes.server import Reply


class GatedBinance(FakeBinance):
    """FakeBinance that holds every `/api/v3/klines` request while the gate is closed (open by default)."""

    def __init__(self, *args, gate_timeout: float = 120.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gate = threading.Event()
        self._gate.set()
        self._arrived = threading.Condition()
        self.held = 0  # klines requests that reached the closed gate
        self.gate_timeout = gate_timeout  # a held request is answered after this anyway (no hung server)

    def close(self) -> None:
        """Hold klines requests from now on."""
        self._gate.clear()

    def open(self) -> None:
        """Answer held and later klines requests normally."""
        self._gate.set()

    def wait_for_request(self, timeout: float) -> None:
        """Block until a klines request is held at the closed gate (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while self.held == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no klines request reached the gate within {timeout:.0f}s")
                self._arrived.wait(left)

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
        if path == "/api/v3/klines" and not self._gate.is_set():
            with self._arrived:
                self.held += 1
                self._arrived.notify_all()
            self._gate.wait(self.gate_timeout)
        return super().handle(path, params, headers)
