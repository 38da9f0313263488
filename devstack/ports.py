"""Loopback ports for local servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port free right now on 127.0.0.1 (the caller binds it soon after; retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout_s: float, host: str = LOOPBACK) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_in_use(port, host):
            return True
        time.sleep(0.02)
    return False


def leashed(command: list[str]) -> list[str]:
    """`command`, made to die with this process even when it is SIGKILLed (devstack/leash.py).
    Start leashed processes from the main thread: Linux ties the leash to the starting thread."""
    if not sys.platform.startswith("linux"):
        return command
    # Run as a file, not `-m devstack.leash`: the working directory need not hold devstack.
    return [sys.executable, str(Path(__file__).with_name("leash.py")), str(os.getpid()), *command]


def stop_process(process: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after `grace_s`: a server we started never outlives us."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace_s)


class ServerProcess:
    """A server we run as a child process on one loopback port (the broker, moto_server): its
    own session, so a terminal's Ctrl-C reaches us and we stop it in order; on a leash, so it
    dies with us; its output in a temporary file for errors; stopped on `stop()` or leaving a
    `with` block."""

    stop_grace_s = 5.0  # SIGTERM, then SIGKILL after this long

    def __init__(self, port: int | None = None) -> None:
        self._requested_port = port
        self.port = port or 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.command: list[str] = []  # as launched, without the leash

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _claim_port(self, error: type[Exception]) -> None:
        """Refuse a requested port that is taken; else take it, or a free one."""
        if self._requested_port and port_in_use(self._requested_port):
            raise error(
                f"port {self._requested_port} on {LOOPBACK} is already in use: stop what holds it "
                "or choose another port"
            )
        self.port = self._requested_port or free_port()

    def _launch(
        self, command: list[str], log_prefix: str, env: dict[str, str] | None = None
    ) -> None:
        self._log = tempfile.TemporaryFile(prefix=log_prefix)  # noqa: SIM115 -- lives with the server
        self.command = command
        self._process = subprocess.Popen(
            leashed(command),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    def log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return "(no log)"
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self, timeout_s: float | None = None) -> None:
        process, self._process = self._process, None
        stop_process(process, self.stop_grace_s if timeout_s is None else timeout_s)
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


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (port 0: a free one), started and stopped whole."""

    thread_name = "loopback-http"

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer((LOOPBACK, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one interval
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------ leftovers of a killed stack


def record_servers(path: Path, servers: list[ServerProcess]) -> None:
    """Write down the servers this process runs, so that the next start can stop them if this
    process dies without stopping them (SIGKILL where the leash does not hold, on macOS)."""
    running = [{"pid": s.pid, "command": s.command} for s in servers if s.running]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": os.getpid(), "servers": running}))


def clear_leftovers(path: Path) -> list[str]:
    """Stop the servers a dead stack wrote down (each only if its pid still runs the very
    command written down: a pid the system has reused is left alone); what was stopped."""
    if not path.exists():
        return []
    written = json.loads(path.read_text())
    owner = written.get("owner")
    if isinstance(owner, int) and owner != os.getpid() and _alive(owner):
        return []  # its stack is still running: not leftovers
    cleared = []
    for server in written.get("servers", []):
        pid, command = server.get("pid"), server.get("command")
        if isinstance(pid, int) and isinstance(command, list) and _runs(pid, command):
            os.kill(pid, signal.SIGKILL)
            cleared.append(f"{' '.join(command)[:80]} (pid {pid})")
    path.unlink()
    return cleared


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs(pid: int, command: list[str]) -> bool:
    """Whether `pid` is running `command` (ps -ww: whole command lines, Linux and macOS)."""
    result = subprocess.run(
        ["ps", "-ww", "-o", "command=", "-p", str(pid)],  # noqa: S607 -- ps from PATH, as a shell would
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == " ".join(command)
