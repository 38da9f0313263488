"""Run a command that dies with the process that started it (Linux):
`python devstack/leash.py <parent pid> <command> [args...]` (standard library only).

The local stack's broker and moto_server run in their own sessions (so a terminal's Ctrl-C
reaches the stack, which stops them in order). A stack killed with SIGKILL cannot stop them:
this asks the kernel to send them SIGTERM when their parent dies (prctl PR_SET_PDEATHSIG), then
execs the command, which keeps the pid. Elsewhere the next start clears them instead
(devstack.stack.clear_leftovers).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before the leash was on
        sys.exit(0)
    os.execvp(command[0], command)  # noqa: S606 -- the command is our own, argv as given


if __name__ == "__main__":
    main(sys.argv[1:])
