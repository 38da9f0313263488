"""The `orderstream` command: argument parsing, output and exit status; the work is in
replay.py, redrive.py and smoke.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from botocore.exceptions import BotoCoreError, ClientError

from operate import redrive, replay, smoke
from operate.where import Place, PlaceError, in_aws, local
from orderstream import settings

OK, FAILED, USAGE = 0, 1, 2

DESCRIPTION = """\
Operate an orderstream stack, in AWS (--stack NAME) or the local one `make run` started
(--local): replay archived records to a consumer, redrive what the consumers gave up on, and
smoke-test a fresh deployment. The same calls (Lambda Invoke, S3) reach both: the local stack
serves Lambda's API for its functions.

Every run ends with a summary. --dry-run prints what would be replayed or redriven (objects,
records, partitions, offset ranges) and changes nothing.
"""

EPILOG = """\
exit status:
  0  everything succeeded (or, with --dry-run, the plan was printed)
  1  some records failed; their objects stay where they are for the next run
  2  bad usage: unknown stack or function, a time that is not ISO 8601, a refused replay

examples:
  orderstream smoke --stack orderstream-dev
  orderstream replay --local --target S3ArchiverFunction \\
      --since 2026-11-30T09:00Z --until 2026-11-30T10:00Z
  orderstream replay --stack orderstream-dev --target EmailNotifierFunction \\
      --since 2026-11-29 --until 2026-11-30 --dry-run
  orderstream redrive --local --source dead-letters --dry-run
  orderstream redrive --stack orderstream-prod --region eu-west-1 --source failures

The IAM permissions the command needs in AWS are in docs/operate.md.
"""

REPLAY = """\
Read the archived records of a topic stamped in [--since, --until) from the archive bucket,
rebuild each as the record Lambda delivered (topic, partition, offset, timestamp, key, headers
and value bytes, poison records included) and invoke --target with them directly, in offset
order, in batches of its mapping's BatchSize under Lambda's 6 MB payload.

The consumers are idempotent, so a replay is safe: the email notifier sends no confirmation it
has sent, the archiver finds every record archived already and writes nothing. But the
notifier remembers a sent confirmation only for EmailIdempotencySeconds (8 days), while the
archive is kept for good: replaying older records to it would mail customers again, so the
command refuses unless given --allow-resend.
"""

REDRIVE = """\
Hand what the consumers gave up on back to a consumer, after a fix:
  --source failures      the mappings' on-failure records (aws/lambda/... in the dead-letter
                         bucket): whole invocations that exhausted their retries, each sent back
                         to the function it came from, or to --target
  --source dead-letters  the consumers' poison records (dead-letters/...), each sent back to the
                         consumer that dead-lettered it, or to --target
An object is moved under redriven/ only once the invocation succeeded for its records (no
failure reported, and for a dead letter, not dead-lettered again); running it twice redrives
nothing twice.
"""

SMOKE = """\
Place one test order through the API and report each stage with its time: accepted (the 202),
on-topic (the partition and offset the broker acknowledged), confirmed (the email notifier's
record of the sent confirmation) and archived (the record in its archive object). The
confirmation goes to the notifier's EmailRedirectTo, else to the sender address. Exits 1 naming
the first stage that did not happen within its time limit.
"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="orderstream",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        where = sub.add_mutually_exclusive_group(required=True)
        where.add_argument("--stack", metavar="NAME", help="the CloudFormation stack in AWS")
        where.add_argument("--local", action="store_true", help="the stack `make run` started")
        sub.add_argument("--region", help="the stack's region (default: your AWS configuration)")
        return sub

    play = command("replay", "replay archived records to a consumer", REPLAY)
    play.add_argument(
        "--target", required=True, metavar="LOGICAL_ID", help="e.g. S3ArchiverFunction"
    )
    play.add_argument("--since", required=True, metavar="TIME", help="ISO 8601, UTC unless zoned")
    play.add_argument("--until", required=True, metavar="TIME", help="ISO 8601, exclusive")
    play.add_argument("--partition", type=int, metavar="N", help="only this partition")
    play.add_argument("--topic", default=settings.DEFAULT_ORDER_TOPIC, help=argparse.SUPPRESS)
    play.add_argument("--dry-run", action="store_true", help="print the plan, invoke nothing")
    play.add_argument(
        "--include-poison",
        action="store_true",
        help="also send records the archive kept as poison to a target that dead-letters them",
    )
    play.add_argument(
        "--allow-resend",
        action="store_true",
        help="replay records older than the target remembers (the notifier mails them again)",
    )

    drive = command("redrive", "redrive failed batches or dead letters", REDRIVE)
    drive.add_argument("--source", required=True, choices=["failures", "dead-letters"])
    drive.add_argument("--target", metavar="LOGICAL_ID", help="another function to send them to")
    drive.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    test = command("smoke", "one test order through every stage", SMOKE)
    for stage, limit in smoke.LIMITS_S.items():
        test.add_argument(
            f"--{stage}-wait",
            type=float,
            default=limit,
            metavar="SECONDS",
            help=f"how long to wait for `{stage}` (default {limit:g})",
        )
    return top


def main(
    argv: Sequence[str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    place_of: Callable[[argparse.Namespace], Place] | None = None,
) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        place = (place_of or _place)(args)
        if args.command == "replay":
            return _replay(args, place, out, err)
        if args.command == "redrive":
            return _redrive(args, place, out, err)
        return _smoke(args, place, out)
    except (PlaceError, replay.RefusedError, ValueError) as exc:
        print(f"orderstream {args.command}: {exc}", file=err)
        return USAGE
    except (BotoCoreError, ClientError) as exc:  # AWS refused or could not be reached
        print(f"orderstream {args.command}: {type(exc).__name__}: {exc}", file=err)
        return FAILED


def _place(args: argparse.Namespace) -> Place:
    return local() if args.local else in_aws(args.stack, args.region)


def _replay(args: argparse.Namespace, place: Place, out: TextIO, err: TextIO) -> int:
    since, until = replay.parse_time(args.since), replay.parse_time(args.until)
    plan = replay.prepare(
        place,
        args.target,
        args.topic,
        since,
        until,
        args.partition,
        include_poison=args.include_poison,
        allow_resend=args.allow_resend,
    )
    _print(out, [f"replay to {args.target} in {place.description}", *plan.describe()])
    if args.dry_run:
        _print(out, ["dry run: nothing was invoked"])
        return OK
    tally = replay.run(place, args.target, plan, _progress(err))
    return _summary(out, tally)


def _redrive(args: argparse.Namespace, place: Place, out: TextIO, err: TextIO) -> int:
    plan = redrive.plan(place, args.source, args.target)
    _print(out, [f"redrive {args.source} in {place.description}", *plan.describe()])
    if args.dry_run:
        _print(out, ["dry run: nothing was invoked or moved"])
        return OK
    tally = redrive.run(place, plan, _progress(err))
    return _summary(out, tally)


def _smoke(args: argparse.Namespace, place: Place, out: TextIO) -> int:
    def report(stage: smoke.Stage) -> None:
        mark = "ok    " if stage.ok else "FAILED"
        _print(out, [f"{mark} {stage.name:<10} {stage.seconds:6.1f} s  {stage.detail}"])

    limits = {stage: getattr(args, f"{stage}_wait") for stage in smoke.LIMITS_S}
    stages = smoke.run(place, limits, report)
    failed = [s for s in stages if not s.ok]
    if failed:
        _print(out, [f"smoke test failed at: {failed[0].name}"])
        return FAILED
    return OK


def _summary(out: TextIO, tally: replay.Tally) -> int:
    _print(out, ["summary", *(f"  {line}" for line in tally.lines())])
    for error in tally.errors[:10]:
        _print(out, [f"  error: {error}"])
    return OK if tally.failed == 0 else FAILED


def _progress(err: TextIO) -> Callable[[int, int], None]:
    """A progress bar on a terminal; nothing when the output is a file or a pipe."""
    if not err.isatty():
        return lambda done, total: None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width if total == 0 else width * done // total
        err.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} records")
        if done >= total:
            err.write("\n")
        err.flush()

    return show


def _print(out: TextIO, lines: Sequence[str]) -> None:
    for line in lines:
        print(line, file=out)
