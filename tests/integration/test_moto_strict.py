"""The local AWS emulator is no more lenient than S3 about conditional writes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.s3.models import S3Backend
from moto.s3.responses import S3Response

from devstack.moto_strict import make_conditional_puts_atomic
from devstack.ports import LOOPBACK, free_port

WRITERS = 2


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """An in-process moto_server and a bucket; moto's S3 classes are restored afterwards."""
    monkeypatch.setattr(S3Backend, "put_object", S3Backend.put_object)
    monkeypatch.setattr(S3Response, "put_object", S3Response.put_object)
    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port)
    server.start()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{LOOPBACK}:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="eu-west-1",
    )
    bucket = f"race-{uuid.uuid4()}"  # moto's in-process state outlives the server
    client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    yield client, bucket
    server.stop()


def race(moto: tuple[Any, str]) -> list[str]:
    """WRITERS threads create one key at once with If-None-Match: *; what each got back."""
    client, bucket = moto
    outcomes: list[str] = []
    start = threading.Barrier(WRITERS, timeout=30)

    def write(n: int) -> None:
        start.wait()
        try:
            client.put_object(Bucket=bucket, Key="k", Body=f"{n}".encode(), IfNoneMatch="*")
            outcomes.append("written")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return sorted(outcomes)


def test_plain_moto_lets_racing_conditional_creates_both_win(
    moto_s3: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why devstack/moto_strict.py exists: both writers pass moto's check before either
    writes (a barrier in moto's store makes sure of it), and both 'create' the object."""
    both_checked = threading.Barrier(WRITERS, timeout=10)
    original = S3Backend.put_object

    def put_after_both_checked(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        both_checked.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", put_after_both_checked)
    assert race(moto_s3) == ["written"] * WRITERS


def test_the_local_emulator_lets_exactly_one_conditional_create_win(
    moto_s3: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the check and the write under one lock, whoever comes second sees the object, as
    on S3, however the threads are scheduled."""
    original = S3Backend.put_object

    def slow_put(self: S3Backend, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # widens the window a lost update would need; asserts no timing
        return original(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", slow_put)
    make_conditional_puts_atomic()
    assert race(moto_s3) == ["PreconditionFailed"] * (WRITERS - 1) + ["written"]
