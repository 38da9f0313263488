"""The emails the functions sent through the AWS emulator, rendered and written as .eml files.

moto keeps what SES was asked to send (template name and data); rendering it with the template
from the emulator shows a person exactly what a customer would receive.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

from moto.ses.template import parse_template


@dataclass(frozen=True)
class SentEmail:
    message_id: str
    source: str
    to: list[str]
    subject: str
    text: str
    html: str

    def as_eml(self) -> bytes:
        message = EmailMessage(policy=SMTP)
        message["Message-ID"] = f"<{self.message_id}@orderstream.local>"
        message["From"] = self.source
        message["To"] = ", ".join(self.to)
        message["Subject"] = self.subject
        message.set_content(self.text)
        if self.html:
            message.add_alternative(self.html, subtype="html")
        return message.as_bytes()


def _render(template: dict[str, str], data: dict[str, Any]) -> tuple[str, str, str]:
    """Subject, text and HTML. A part moto cannot render says why in its place: one email
    that SES would have refused must not hide the others (from outbox/ and the console)."""

    def part(name: str) -> str:
        text = template.get(name) or ""
        try:
            return parse_template(text, data) if text else ""
        except Exception as exc:  # moto's renderer raises its own types for missing data
            return f"(the emulator could not render this part: {type(exc).__name__}: {exc})"

    return part("SubjectPart"), part("TextPart"), part("HtmlPart")


def sent_emails(
    moto_state: dict[str, Any], templates: dict[str, dict[str, str]]
) -> list[SentEmail]:
    """Every email SES accepted, in the order it was sent."""
    ses = moto_state.get("ses", {})
    emails: list[SentEmail] = []
    for bulk in ses.get("BulkTemplateMessage", []):
        defaults = json.loads(bulk.get("template_data") or "{}")
        template = templates.get(bulk["template"], {})
        for message_id, destination in zip(bulk["ids"], bulk["destinations"], strict=False):
            data = {**defaults, **json.loads(destination.get("ReplacementTemplateData") or "{}")}
            subject, text, html = _render(template, data)
            to = destination["Destination"].get("ToAddresses", [])
            emails.append(SentEmail(message_id, bulk["source"], to, subject, text, html))
    for single in ses.get("TemplateMessage", []):
        destinations = single["destinations"]
        if isinstance(destinations, list):  # moto files each bulk send here too
            continue
        data = json.loads(single.get("template_data") or "{}")
        subject, text, html = _render(templates.get(single["template"], {}), data)
        to = destinations.get("ToAddresses", [])
        emails.append(SentEmail(single["id"], single["source"], to, subject, text, html))
    for plain in ses.get("Message", []):
        to = plain["destinations"].get("ToAddresses", [])
        emails.append(
            SentEmail(plain["id"], plain["source"], to, plain["subject"], plain["body"], "")
        )
    return emails


def write_outbox(folder: Path, emails: list[SentEmail]) -> list[Path]:
    """Write each email not yet there as <n>-<recipient>.eml; return the new files."""
    folder.mkdir(parents=True, exist_ok=True)
    known = {p.stem.split("-", 1)[-1] for p in folder.glob("*.eml")}
    written = []
    for email in emails:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", email.message_id)
        if stem in known:
            continue
        count = len(known) + 1
        path = folder / f"{count:06d}-{stem}.eml"
        path.write_bytes(email.as_eml())
        known.add(stem)
        written.append(path)
    return written


def emailed_order_ids(moto_state: dict[str, Any]) -> Counter[str]:
    """order_id -> how many confirmations SES accepted for it (from the template data)."""
    ses = moto_state.get("ses", {})
    counts: Counter[str] = Counter()
    for bulk in ses.get("BulkTemplateMessage", []):
        for destination in bulk["destinations"]:
            counts[json.loads(destination["ReplacementTemplateData"])["order_id"]] += 1
    for single in ses.get("TemplateMessage", []):
        if isinstance(single["destinations"], dict):  # moto files each bulk send here too
            counts[json.loads(single["template_data"])["order_id"]] += 1
    return counts
