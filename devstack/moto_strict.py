"""moto_server, with S3's conditional writes made atomic as S3 makes them.

moto checks PutObject's If-Match / If-None-Match by reading the key and then writing it, with no
lock, in a threaded server: two conditional writers racing for one key can both win, which S3
never allows (one gets 412 PreconditionFailed or 409 ConditionalRequestConflict). The archiver's
exactness rests on S3's guarantee, so the local stack must not be more lenient than S3: here a
conditional PutObject checks and writes under one lock. Run as `python -m devstack.moto_strict
<moto_server arguments>`.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

from moto.s3.responses import S3Response
from moto.server import main

_CONDITIONAL_WRITES = threading.Lock()


def make_conditional_puts_atomic() -> None:
    original = S3Response.put_object
    if getattr(original, "_orderstream_atomic", False):
        return

    @functools.wraps(original)
    def put_object(self: S3Response) -> Any:
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with _CONDITIONAL_WRITES:
                return original(self)
        return original(self)

    put_object._orderstream_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]


if __name__ == "__main__":
    make_conditional_puts_atomic()
    main(sys.argv[1:])
