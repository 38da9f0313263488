"""A local stack that dies leaves nothing behind: after SIGKILL its broker and moto_server go
too (Linux: devstack/leash.py), and where they cannot, the next start stops them, so the next
`make run` finds its ports free."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.ports import port_in_use
from devstack.template import ROOT

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the leash is Linux's PR_SET_PDEATHSIG"
)

STACK = """
import json, sys, time
from pathlib import Path
from devstack.stack import LocalStack
stack = LocalStack(state_dir=Path(sys.argv[1]), outbox=None, log=lambda _: None)
stack.start_backing()
print(json.dumps({"broker": stack.broker.port, "aws": stack.moto.port}), flush=True)
time.sleep(600)
"""


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie holds no port and waits only for its reaper


@linux_only
def test_a_killed_stack_takes_its_broker_and_aws_emulator_with_it(tmp_path: Path) -> None:
    stack = subprocess.Popen(
        [sys.executable, "-c", STACK, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stack.stdout is not None
        ports = json.loads(stack.stdout.readline())
        servers = children(stack.pid)
        assert len(servers) == 2  # the broker and moto_server
        assert all(port_in_use(p) for p in ports.values())
        os.kill(stack.pid, signal.SIGKILL)
        stack.wait(30)
        deadline = time.monotonic() + 30  # a hang guard, not a speed claim
        while any(alive(pid) for pid in servers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in servers if alive(pid)]
        assert not [p for p in ports.values() if port_in_use(p)]
    finally:
        if stack.poll() is None:
            stack.kill()
            stack.wait(30)


def test_the_next_start_clears_servers_a_killed_stack_left(tmp_path: Path) -> None:
    """Where the leash does not hold (macOS), a SIGKILLed stack leaves its servers running: the
    next start finds them written down, stops them, and starts on its ports."""
    from devstack.ports import ServerProcess, clear_leftovers, free_port, record_servers

    class Orphan(ServerProcess):  # a server whose stack died without a leash
        def start(self) -> Orphan:
            self.port = free_port()
            listen = f"s=socket.create_server(('127.0.0.1',{self.port}))"
            code = f"import socket,time; {listen}; time.sleep(120)"
            self._launch([sys.executable, "-c", code], "orphan-")
            return self

    orphan = Orphan().start()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        deadline = time.monotonic() + 30
        while not port_in_use(orphan.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        servers = tmp_path / "servers.json"
        record_servers(servers, [orphan])
        written = json.loads(servers.read_text())
        # As a dead stack leaves it: its owner gone, and a pid since reused by another program.
        written["owner"] = 2**22 + 1  # above Linux's pid_max: never a running process
        written["servers"].append({"pid": bystander.pid, "command": orphan.command})
        servers.write_text(json.dumps(written))

        [cleared] = clear_leftovers(servers)
        assert f"(pid {orphan.pid})" in cleared
        assert not servers.exists()
        deadline = time.monotonic() + 30  # a hang guard, not a speed claim
        while alive(orphan.pid or 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(orphan.pid or 0)
        assert bystander.poll() is None  # its command is not the one written down: left alone
        assert clear_leftovers(servers) == []
    finally:
        orphan.stop()
        bystander.kill()
        bystander.wait(30)


def test_a_running_stacks_servers_are_not_leftovers(tmp_path: Path) -> None:
    from devstack.broker import EmbeddedBroker
    from devstack.ports import clear_leftovers, record_servers

    with EmbeddedBroker() as broker:
        servers = tmp_path / "servers.json"
        record_servers(servers, [broker])  # owned by this process, which is alive
        written = json.loads(servers.read_text())
        written["owner"] = os.getppid()  # another live process: a stack still running
        servers.write_text(json.dumps(written))
        assert clear_leftovers(servers) == []
        assert broker.running
        assert servers.exists()
