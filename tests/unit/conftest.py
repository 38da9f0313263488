"""Fixtures shared by the unit tests: both Kafka consumers in-process against moto.

`handlers` gives the S3 archiver's and the email notifier's handler modules with fresh
containers, wired to moto S3 (archive and dead-letter buckets), DynamoDB (the idempotency table)
and SES (the confirmation template from template.yaml), with the environment template.yaml gives
them. Tests that feed both consumers the same MSK event use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

from devstack.template import Resolver, load_template
from orderstream import settings as env
from tests.samples import template_archive_years

SENDER = "orders@example.com"
ARCHIVE_BUCKET = "orderstream-unit-archive"
DEAD_LETTER_BUCKET = "orderstream-unit-dead-letters"


def confirmation_template() -> dict[str, str]:
    """OrderConfirmationTemplate's Template property, resolved as CloudFormation would."""
    template = load_template()
    spec = template["Resources"]["OrderConfirmationTemplate"]["Properties"]["Template"]
    resolved: dict[str, str] = Resolver(template, {"Stage": "dev", "SenderEmail": SENDER}).resolve(
        spec
    )
    return resolved


TEMPLATE = confirmation_template()


@pytest.fixture
def handlers(
    idempotency_table: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, ModuleType]]:
    """The archiver and the notifier with fresh containers, against moto S3, DynamoDB, SES."""
    from functions.email_notifier import app as notifier
    from functions.s3_archiver import app as archiver

    for bucket in (ARCHIVE_BUCKET, DEAD_LETTER_BUCKET):
        s3_with_bucket(bucket)
    ses = boto3.client("ses")
    ses.verify_email_identity(EmailAddress=SENDER)
    ses.create_template(Template=TEMPLATE)
    monkeypatch.setenv(env.ARCHIVE_BUCKET, ARCHIVE_BUCKET)
    monkeypatch.setenv(env.ARCHIVE_YEARS, template_archive_years())
    monkeypatch.setenv(env.DEAD_LETTER_BUCKET, DEAD_LETTER_BUCKET)
    monkeypatch.setenv(env.SENDER_EMAIL, SENDER)
    monkeypatch.setenv(env.EMAIL_TEMPLATE, TEMPLATE["TemplateName"])
    monkeypatch.delenv(env.EMAIL_REDIRECT_TO, raising=False)
    monkeypatch.delenv(env.IDEMPOTENCY_EXPIRES_SECONDS, raising=False)
    archiver.archive_store.cache_clear()
    archiver.archive_years.cache_clear()
    notifier.notifier.cache_clear()
    yield archiver, notifier
    archiver.archive_store.cache_clear()
    notifier.notifier.cache_clear()


def s3_with_bucket(bucket: str) -> Any:
    """An S3 client (moto) and the bucket, created in the template's region."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return s3


def objects(bucket: str) -> dict[str, bytes]:
    """Every object in the bucket, by key."""
    s3 = boto3.client("s3")
    listing = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {i["Key"]: s3.get_object(Bucket=bucket, Key=i["Key"])["Body"].read() for i in listing}
