"""A local stack that dies leaves nothing behind: after SIGKILL its broker and moto_server go
too, so the next `make run` finds its ports free (Linux: devstack/leash.py)."""

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

pytestmark = pytest.mark.skipif(
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
