"""The whole pipeline on one machine: broker, AWS emulator, API, event-source mappings.

Everything is read from template.yaml: the functions and their environments, the API routes,
the mappings (topic, group, batching, retries, destination) and the resources to create.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from kafka import KafkaAdminClient

from devstack import aws
from devstack.api import LocalApi, routes_of
from devstack.broker import EmbeddedBroker
from devstack.esm import EventSourceMapping, MappingSpec
from devstack.faults import HttpFaultProxy, TcpFaultProxy
from devstack.functions import FunctionHost, FunctionPool, FunctionSpec, Invocation, load_functions
from devstack.journal import Journal
from devstack.lambda_api import LambdaApiServer, template_properties
from devstack.mail import SentEmail, sent_emails, write_outbox
from devstack.ports import LOOPBACK, clear_leftovers, port_in_use, record_servers
from devstack.template import ROOT, Resolver, load_template
from orderstream import settings
from orderstream.topics import reconcile_topics, required_topics

STATE_DIR = ROOT / "devstack" / ".state"
OUTBOX = ROOT / "outbox"
# A sender the API would take as a customer address too (`orderstream smoke` mails the sender).
LOCAL_PARAMETERS = {"Stage": "local", "SenderEmail": "orders@orderstream.example.com"}
API_CONTAINERS = 4  # concurrent requests served per function, like Lambda scaling out

# Ports, each overridable by an environment variable.
BROKER_PORT_VAR, AWS_PORT_VAR, API_PORT_VAR = "BROKER_PORT", "AWS_PORT", "API_PORT"
LAMBDA_PORT_VAR, CONSOLE_PORT_VAR = "LAMBDA_PORT", "CONSOLE_PORT"
# 3001 for Lambda's API, as `sam local start-lambda` has it.
DEFAULT_PORTS = {
    BROKER_PORT_VAR: 9092,
    AWS_PORT_VAR: 5000,
    API_PORT_VAR: 3000,
    LAMBDA_PORT_VAR: 3001,
    CONSOLE_PORT_VAR: 8000,
}


class StackError(RuntimeError):
    pass


@dataclass
class StackInfo:
    """What `status` and `invoke` need to find a running stack (written to stack.json)."""

    bootstrap_servers: str
    aws_endpoint: str
    api_url: str
    topics: list[str]
    groups: dict[str, str]  # function -> consumer group
    buckets: dict[str, str]  # logical id -> name
    lambda_endpoint: str  # Lambda's API for the functions (boto3's endpoint_url)
    functions: dict[str, str]  # logical id -> function name
    console_url: str = ""  # empty: the stack serves no console
    pid: int = field(default_factory=os.getpid)


def configured_ports(environ: dict[str, str] | None = None) -> dict[str, int]:
    env = os.environ if environ is None else environ
    ports = {}
    for name, default in DEFAULT_PORTS.items():
        raw = env.get(name, str(default))
        if not raw.isdigit() or not 0 <= int(raw) < 65536:
            raise StackError(f"{name}={raw!r} is not a port number")
        ports[name] = int(raw)
    return ports


class LocalStack:
    def __init__(
        self,
        broker_port: int = 0,
        aws_port: int = 0,
        api_port: int = 0,
        lambda_port: int = 0,
        external_bootstrap: str | None = None,
        state_dir: Path = STATE_DIR,
        outbox: Path | None = OUTBOX,
        built_dir: Path | None = None,
        log: Callable[[str], None] = print,
        parameters: dict[str, str] | None = None,
        max_batching_window_s: float | None = None,
        faults: bool = False,
        console_port: int | None = None,
    ) -> None:
        self.broker_port, self.aws_port, self.api_port = broker_port, aws_port, api_port
        self.lambda_port = lambda_port
        self.external_bootstrap = external_bootstrap
        self.state_dir = state_dir
        self.outbox = outbox
        self.built_dir = built_dir
        self.log = log
        self.parameters = {**LOCAL_PARAMETERS, **(parameters or {})}
        # Tests shorten the archiver's 60 s window; `make run` keeps the template's values.
        self.max_batching_window_s = max_batching_window_s
        # With faults, functions reach AWS and every client reaches Kafka through proxies that
        # tests can make fail (see devstack/faults.py).
        self.faults = faults
        self.console_port = console_port  # None: no console (devstack/console.py)
        self.console: Any = None
        # The last invocations of each function, and every email sent: what the console shows.
        self.journal = Journal()
        self.api_functions: list[str] = []  # logical ids the local API invokes
        self.emails: list[SentEmail] = []
        self.aws_faults: HttpFaultProxy | None = None
        self.kafka_faults: TcpFaultProxy | None = None
        self.function_endpoint = ""
        self.template = load_template()
        self.broker: EmbeddedBroker | None = None
        self.moto: aws.MotoServer | None = None
        self.resolver: Resolver | None = None
        self.functions: dict[str, FunctionSpec] = {}
        self.pools: dict[str, FunctionPool] = {}
        self.mappings: list[EventSourceMapping] = []
        self.api: LocalApi | None = None
        self.lambda_api: LambdaApiServer | None = None
        self.info: StackInfo | None = None
        self._logs: list[IO[str]] = []
        self._stop = threading.Event()
        self._outbox_thread: threading.Thread | None = None
        self.topics: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def _servers_file(self) -> Path:
        """The servers this stack runs, for the next start if it is killed (clear_leftovers)."""
        return self.state_dir / "servers.json"

    def start(self) -> StackInfo:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def start_backing(self) -> tuple[str, str, Resolver]:
        """Broker, AWS emulator, resources and topics: what a function needs to run."""
        for cleared in clear_leftovers(self._servers_file):
            self.log(f"cleared   {cleared}, left by a stack that was killed")
        if self.external_bootstrap:
            bootstrap = self.external_bootstrap
            self.log(f"broker    {bootstrap} (yours, from {settings.KAFKA_BOOTSTRAP_SERVERS})")
        elif self.faults:
            self.kafka_faults = TcpFaultProxy(target_port=0)
            self.broker = EmbeddedBroker(advertised_port=self.kafka_faults.port).start()
            self.kafka_faults.target_port = self.broker.port
            self.kafka_faults.start()
            bootstrap = self.broker.bootstrap_servers
            self.log(f"broker    {bootstrap} (Tansu on {self.broker.port}, through a fault proxy)")
        else:
            self.broker = EmbeddedBroker(port=self.broker_port or None).start()
            bootstrap = self.broker.bootstrap_servers
            self.log(f"broker    {bootstrap} (Tansu, in memory)")
        self.moto = aws.MotoServer(port=self.aws_port or None).start()
        record_servers(self._servers_file, [s for s in (self.broker, self.moto) if s is not None])
        aws.wait_until_ready(self.moto.endpoint_url)
        self.function_endpoint = self.moto.endpoint_url
        if self.faults:
            self.aws_faults = HttpFaultProxy(self.moto.endpoint_url).start()
            self.function_endpoint = self.aws_faults.url
        self.log(f"aws       {self.moto.endpoint_url} (moto_server)")

        resources = aws.plan(self.template, self.parameters, bootstrap)
        self.resolver = resources.resolver(self.template, self.parameters)
        for created in aws.create(self.resolver, self.moto.endpoint_url):
            self.log(f"          created {created}")
        self.topics = self._create_topics(bootstrap)
        return bootstrap, self.moto.endpoint_url, self.resolver

    def _start(self) -> StackInfo:
        for port, variable in (
            (self.api_port, API_PORT_VAR),
            (self.lambda_port, LAMBDA_PORT_VAR),
            (self.console_port, CONSOLE_PORT_VAR),
        ):
            if port and port_in_use(port):
                raise StackError(f"port {port} on {LOOPBACK} is already in use (set {variable})")
        bootstrap, endpoint, resolver = self.start_backing()

        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self.functions = load_functions(resolver)
        for logical_id in self.functions:
            self.pools[logical_id] = FunctionPool(self._host_factory(logical_id), API_CONTAINERS)

        groups: dict[str, str] = {}
        s3 = aws.client("s3", endpoint)
        for mapping_spec in mapping_specs(self.functions, resolver):
            if self.max_batching_window_s is not None:
                mapping_spec = dataclasses.replace(
                    mapping_spec,
                    batching_window_s=min(
                        mapping_spec.batching_window_s, self.max_batching_window_s
                    ),
                )
            logical_id = mapping_spec.function
            mapping = EventSourceMapping(
                mapping_spec,
                bootstrap,
                self._invoker(logical_id),
                put_object=lambda bucket, key, body: s3.put_object(
                    Bucket=bucket, Key=key, Body=body
                ),
                log=self.log,
                journal=self.journal.add,
            )
            self.mappings.append(mapping.start())
            groups[logical_id] = mapping_spec.group_id
            self.log(
                f"mapping   {logical_id} <- {','.join(mapping_spec.topics)} "
                f"(group {mapping_spec.group_id}, batch {mapping_spec.batch_size}, "
                f"window {mapping_spec.batching_window_s:g}s)"
            )

        routes = routes_of(self.functions)
        self.api_functions = sorted({route.function for route in routes})
        try:
            self.api = LocalApi(routes, self._recorded("api"), self.api_port, log=self.log).start()
        except OSError as exc:
            raise StackError(
                f"the local API cannot listen on {LOOPBACK}:{self.api_port}: {exc}"
            ) from exc
        for route in routes:
            self.log(f"api       {route.method} {self.api.url}{route.resource} -> {route.function}")

        functions = {lid: spec.function_name for lid, spec in self.functions.items()}
        try:
            self.lambda_api = LambdaApiServer(
                {lid: (functions[lid], spec) for lid, spec in self.functions.items()},
                self._recorded("invoke"),
                lambda: [mapping.spec for mapping in self.mappings],
                self.lambda_port,
                properties=template_properties(resolver),
                log=self.log,
            ).start()
        except OSError as exc:
            raise StackError(
                f"Lambda's API cannot listen on {LOOPBACK}:{self.lambda_port}: {exc}"
            ) from exc
        self.log(f"lambda    {self.lambda_api.url} (Lambda's API: boto3 endpoint_url)")

        if self.outbox is not None or self.console_port is not None:
            self._outbox_thread = threading.Thread(
                target=self._watch_outbox, name="outbox", daemon=True
            )
            self._outbox_thread.start()
        if self.outbox is not None:
            self.log(f"outbox    {self.outbox}")

        buckets = {
            lid: resolver.values[lid]
            for lid, r in self.template["Resources"].items()
            if r["Type"] == "AWS::S3::Bucket"
        }
        self.info = StackInfo(
            bootstrap,
            endpoint,
            self.api.url,
            self.topics,
            groups,
            buckets,
            lambda_endpoint=self.lambda_api.url,
            functions=functions,
        )
        if self.console_port is not None:
            from devstack.console import Console

            try:
                self.console = Console(self, self.console_port).start()
            except OSError as exc:
                raise StackError(
                    f"the console cannot listen on {LOOPBACK}:{self.console_port}: {exc} "
                    f"(set {CONSOLE_PORT_VAR})"
                ) from exc
            self.info.console_url = self.console.url
            self.log(f"console   {self.console.url}")
        (self.state_dir / "stack.json").write_text(json.dumps(asdict(self.info), indent=2))
        self.log("ready")
        return self.info

    def stop(self) -> None:
        self._stop.set()
        for mapping in self.mappings:
            mapping.request_stop()  # all at once, so none starts another batch
        if self.console is not None:
            self.console.stop()
            self.console = None
        if self.api is not None:
            self.api.stop()
            self.api = None
        if self.lambda_api is not None:
            self.lambda_api.stop()
            self.lambda_api = None
        for pool in self.pools.values():
            pool.stop()  # ends in-flight invocations: their batches stay uncommitted
        for mapping in self.mappings:
            mapping.stop()
        self.mappings = []
        if self._outbox_thread is not None:
            self._outbox_thread.join(3)
        if self.aws_faults is not None:
            self.aws_faults.stop()
            self.aws_faults = None
        if self.moto is not None:
            self.moto.stop()
            self.moto = None
        if self.kafka_faults is not None:
            self.kafka_faults.stop()
            self.kafka_faults = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        servers = self._servers_file
        if servers.exists() and json.loads(servers.read_text()).get("owner") == os.getpid():
            servers.unlink()
        for log in self._logs:
            log.close()
        self._logs = []
        state = self.state_dir / "stack.json"
        if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
            state.unlink()

    # ------------------------------------------------------------------ pieces

    def _create_topics(self, bootstrap: str) -> list[str]:
        """The topics, by the topic provisioner's own code, with the template's properties."""
        assert self.resolver is not None
        props = self.template["Resources"]["KafkaTopics"]["Properties"]
        topic = self.resolver.resolve(props["OrderTopic"])
        partitions = int(self.resolver.resolve(props["Partitions"]))
        # Every ClusterType runs on the one embedded broker, with the type's topic settings.
        replication = (
            int(self.resolver.resolve(props[key]))
            for key in ("ReplicationFactor", "MinInsyncReplicas")
        )
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="devstack")
        try:
            changes = reconcile_topics(admin, required_topics(topic, partitions, *replication))
        finally:
            admin.close()
        self.log(f"topics    {topic} ({partitions} partitions): {changes.summary()}")
        return [topic]

    def _host_factory(self, logical_id: str) -> Callable[[], FunctionHost]:
        def make() -> FunctionHost:
            log = (self.state_dir / "logs" / f"{logical_id}.log").open("a", buffering=1)
            self._logs.append(log)
            return FunctionHost(
                self.functions[logical_id],
                self.function_endpoint,
                built_dir=self.built_dir,
                log=log,
            )

        return make

    def _invoker(self, logical_id: str) -> Callable[[dict[str, Any]], Invocation]:
        return lambda event: self.pools[logical_id].invoke(event)

    def _recorded(self, source: str) -> Callable[[str, Any], Invocation]:
        """Invoke a function for the API or Lambda's API, and write the call in the journal."""

        def invoke(function: str, event: Any) -> Invocation:
            label = source
            if source == "api" and isinstance(event, dict):
                label = f"api {event.get('httpMethod')} {event.get('path')}"
            return self.journal.recording(function, label, self._invoker(function))(event)

        return invoke

    def restart_mappings(self) -> None:
        """Stop every mapping (uncommitted batches are redelivered) and start them afresh."""
        assert self.info is not None
        specs = [(m.spec, m.put_object) for m in self.mappings]
        for mapping in self.mappings:
            mapping.stop()
        self.mappings = [
            EventSourceMapping(
                spec,
                self.info.bootstrap_servers,
                self._invoker(spec.function),
                put_object=put,
                log=self.log,
                journal=self.journal.add,
            ).start()
            for spec, put in specs
        ]

    def _watch_outbox(self) -> None:
        """Every second: the emails SES accepted, kept for the console and written to outbox/."""
        assert self.moto is not None
        while not self._stop.wait(1.0):
            try:
                self.emails = sent_emails(self.moto.data(), self._templates())
                if self.outbox is None:
                    continue
                for path in write_outbox(self.outbox, self.emails):
                    self.log(f"email     {path.name}")
            except Exception as exc:  # the emulator is going away; the next pass retries
                if not self._stop.is_set():
                    self.log(f"outbox: {type(exc).__name__}: {exc}")

    def _templates(self) -> dict[str, dict[str, str]]:
        assert self.moto is not None
        ses = aws.client("ses", self.moto.endpoint_url)
        names = [t["Name"] for t in ses.list_templates()["TemplatesMetadata"]]
        return {name: ses.get_template(TemplateName=name)["Template"] for name in names}


def mapping_specs(functions: dict[str, FunctionSpec], resolver: Resolver) -> list[MappingSpec]:
    """Every function's `Type: MSK` events, resolved, as the template declares them."""
    return [
        dataclasses.replace(
            MappingSpec.from_event(logical_id, name, resolver.resolve(event["Properties"])),
            function_arn=spec.arn,
        )
        for logical_id, spec in functions.items()
        for name, event in spec.events.items()
        if event.get("Type") == "MSK"
    ]


def running_stack(state_dir: Path = STATE_DIR) -> StackInfo | None:
    """The stack started by `make run`, if it is up."""
    path = state_dir / "stack.json"
    if not path.exists():
        return None
    written = json.loads(path.read_text())
    pid = written.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise StackError(f"{path} names no process: remove it")
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    missing = [f.name for f in dataclasses.fields(StackInfo) if f.name not in written]
    if missing:
        # Still up, but started by an older devstack, which did not write these.
        raise StackError(f"{path} lacks {', '.join(missing)}: restart the stack (`make run`)")
    return StackInfo(**written)
