"""Webhooks: signed JSON deliveries of a job's events, retried with back-off by a real Celery
worker, with a stable event id; targets on our own network are refused."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from dev.launcher import WEBHOOK_THREADS, maintenance_command, webhooks_command
from shared import delivery_limits, pinned_http
from shared.delivery_limits import is_down, tenant_slot
from shared.models import Job, JobStatus, utcnow
from shared.queue import create_celery, maintenance_queue, webhook_queue
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import (
    SIGNATURE_HEADER,
    DeliveryFailed,
    WebhookRefused,
    check_target,
    deliver,
    job_event,
    post_event,
    resolve_target,
    send_event,
    sign,
    verify_signature,
)
from tests.utils import (
    assert_problem,
    authed_client,
    drop_queues,
    image_bytes,
    make_job,
    running_worker,
    stored_files,
    submit,
    tenant_named,
    wait_for,
)
from worker.jobs import run_job
from worker.runtime import Runtime


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.5/",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",  # carrier-grade NAT
    ],
)
def test_targets_on_our_own_network_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused, match="public addresses only"):
        check_target(url)
    check_target(url, allow_private=True)  # unless the operator allows them


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("64:ff9b::a00:1", "10.0.0.1"),  # NAT64 (RFC 6052)
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64 of the cloud metadata service
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:c0a8:1::1", "192.168.0.1"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),  # Teredo (client, obfuscated)
        ("::a00:1", "10.0.0.1"),  # IPv4-compatible
        ("::7f00:1", "127.0.0.1"),
        ("::ffff:a00:1", "10.0.0.1"),  # IPv4-mapped
        ("::ffff:0:a00:1", "10.0.0.1"),  # IPv4-translated (RFC 2765)
    ],
)
def test_ipv6_forms_of_private_ipv4_addresses_are_refused_by_the_address_they_embed(
    address: str, embedded: str
) -> None:
    with pytest.raises(WebhookRefused, match=f"embeds {embedded}, "):
        check_target(f"http://[{address}]/hook")


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::808:808", "2002:808:808::1", "::808:808", "::ffff:808:808"],
)
def test_the_same_forms_of_a_public_ipv4_address_pass(address: str) -> None:
    check_target(f"http://[{address}]/hook")


def test_local_use_nat64_is_refused() -> None:
    with pytest.raises(WebhookRefused, match="local-use NAT64"):
        check_target("http://[64:ff9b:1::a00:1]/hook")


def test_public_targets_pass_and_unresolvable_ones_do_not() -> None:
    check_target("https://93.184.215.14/hook")  # an address literal: no lookup needed
    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_target("http://no-such-host.invalid/hook")


def test_signatures_verify_and_tampering_or_age_do_not() -> None:
    body = b'{"id": "1"}'
    header = sign("secret", body)
    assert verify_signature("secret", body, header)
    assert not verify_signature("other", body, header)
    assert not verify_signature("secret", body + b" ", header)
    assert not verify_signature("secret", body, sign("secret", body, int(time.time()) - 3600))
    assert not verify_signature("secret", body, "garbage")


def test_a_job_asking_for_a_private_target_is_refused_and_nothing_written(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    webhook = json.dumps({"url": "http://127.0.0.1:9/hook"})
    body = assert_problem(submit(client, image_bytes(), webhook=webhook), 422)
    assert body["errors"][0]["field"] == "webhook.url"
    assert "127.0.0.1" in body["errors"][0]["message"]
    bad_event = json.dumps({"url": "https://93.184.215.14/", "events": ["finished"]})
    body = assert_problem(submit(client, image_bytes(), webhook=bad_event), 422)
    assert body["errors"][0]["field"] == "webhook.events.0"
    unknown = json.dumps({"url": "https://93.184.215.14/", "secret": "x"})
    assert assert_problem(submit(client, image_bytes(), webhook=unknown), 422)
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


class Receiver:
    """An HTTP server that answers 500 to the first `failures` deliveries of each event (then
    204), or a redirect to `redirect` when given."""

    def __init__(self, failures: int, redirect: str | None = None) -> None:
        self.failures = failures
        self.deliveries: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers["Oneiro-Event-Id"]
                tries = sum(1 for d in receiver.deliveries if d["id"] == event_id)
                status = 500 if tries < receiver.failures else 204
                if redirect is not None:
                    status = 302
                receiver.deliveries.append(
                    {
                        "id": event_id,
                        "event": self.headers["Oneiro-Event"],
                        "signature": self.headers[SIGNATURE_HEADER],
                        "host": self.headers["Host"],
                        "authorization": self.headers["Authorization"],
                        "path": self.path,
                        "body": body,
                        "status": status,
                        "at": time.monotonic(),
                    }
                )
                self.send_response(status)
                if redirect is not None:
                    self.send_header("Location", redirect)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/oneiro"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["status"] == 204]


def worker_settings(settings: Settings, **values: Any) -> tuple[Settings, dict[str, str]]:
    """`settings` with `values` and loopback targets allowed (the receivers here are local),
    and the variables that give a worker process the same."""
    values = {"webhook_allow_private": True, **values}
    extra = {f"ONEIRO_{name.upper()}": str(value) for name, value in values.items()}
    return settings.model_copy(update=values), extra


@contextlib.contextmanager
def background_workers(settings: Settings, env: dict[str, str], logs: Path) -> Iterator[Path]:
    """The maintenance worker (beat, reaper, relay, retention) and the webhooks worker, started
    as `make run` starts them; yields the webhooks worker's log."""
    maintenance = maintenance_command(settings, logs / "beat-schedule")
    try:
        with (
            running_worker(settings, logs / "maintenance.log", command=maintenance, env=env),
            running_worker(
                settings, logs / "webhooks.log", command=webhooks_command(settings), env=env
            ),
        ):
            yield logs / "webhooks.log"
    finally:
        drop_queues(settings.redis_url, webhook_queue(settings), maintenance_queue(settings))


@pytest.fixture
def hooked(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings that allow loopback targets and retry fast, and the real maintenance and
    webhooks workers (the ones `make run` starts) running with them."""
    hooked, env = worker_settings(
        settings, webhook_backoff=0.3, webhook_progress_interval=0.0, webhook_max_attempts=3
    )
    with background_workers(hooked, env, tmp_path):
        yield hooked


def assert_signed_as_documented(secret: str, delivery: dict[str, Any]) -> None:
    """The header is `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`
    (docs/guide/webhooks.md), the HMAC computed here rather than by the code under test."""
    fields = dict(part.split("=", 1) for part in delivery["signature"].split(","))
    assert set(fields) == {"t", "v1"}
    timestamp = int(fields["t"])
    assert abs(time.time() - timestamp) < 120
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + delivery["body"], hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)


def test_events_are_signed_retried_with_back_off_and_keep_their_id(
    hooked: Settings,
    runtime: Runtime,
    session: Session,
    storage: Storage,
    receivers: Any,
) -> None:
    receiver = receivers(failures=2)
    app = create_app(hooked)
    client = authed_client(app)
    webhook = json.dumps({"url": receiver.url})
    job_id = uuid.UUID(
        submit(client, image_bytes(), {"steps": 3, "octaves": 2}, webhook=webhook).get_json()["id"]
    )
    runtime = dataclasses.replace(runtime, settings=hooked)
    assert run_job(job_id, runtime) == JobStatus.SUCCEEDED

    def all_delivered() -> list[dict[str, Any]] | None:
        delivered = receiver.delivered()
        tried = {d["id"] for d in receiver.deliveries}
        done = {d["event"] for d in delivered} >= {"started", "completed"}
        return delivered if done and {d["id"] for d in delivered} == tried else None

    # Deliveries run many at a time and retries interleave: events may arrive out of order
    # (each carries the job's state and its time; docs/guide/webhooks.md says so).
    delivered = wait_for(all_delivered, 60, "every event to be delivered")
    events = sorted(d["event"] for d in delivered)
    assert events.count("started") == 1 and events.count("completed") == 1
    assert events.count("progress") >= 2
    secret = tenant_named(session).webhook_secret
    for d in receiver.deliveries:
        assert_signed_as_documented(secret, d)
        assert verify_signature(secret, d["body"], d["signature"])
        assert json.loads(d["body"])["id"] == d["id"]
    # Each event was tried three times under one id, the gaps growing (0.3 s, then 0.6 s).
    for d in delivered:
        tries = [t for t in receiver.deliveries if t["id"] == d["id"]]
        assert [t["status"] for t in tries] == [500, 500, 204]
        first_gap, second_gap = (b["at"] - a["at"] for a, b in zip(tries, tries[1:], strict=False))
        assert first_gap > 0.25 and second_gap > 0.55
    completed = next(json.loads(d["body"]) for d in delivered if d["event"] == "completed")
    assert completed["type"] == "completed"
    assert completed["job"]["status"] == "succeeded"
    assert completed["job"]["result_url"] == f"/v1/jobs/{job_id}/result"
    fractions = [
        json.loads(d["body"])["job"]["progress"]["fraction"]
        for d in delivered
        if d["event"] == "progress"
    ]
    assert len(set(fractions)) == len(fractions) and all(0 < f <= 1 for f in fractions)
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def cancel_with_webhook(app: Flask, url: str) -> None:
    """Submit a job whose webhook asks only for `completed`, and cancel it: that sends one."""
    client = authed_client(app)
    webhook = json.dumps({"url": url, "events": ["completed"]})
    job_id = submit(client, image_bytes(), webhook=webhook).get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_a_canceled_job_sends_completed_and_only_the_events_asked_for(
    hooked: Settings, client_app: Flask, receivers: Any
) -> None:
    receiver = receivers(failures=0)
    cancel_with_webhook(client_app, receiver.url)
    delivered = wait_for(receiver.delivered, 30, "the completed event")
    time.sleep(0.5)  # nothing else follows
    assert [d["event"] for d in receiver.deliveries] == ["completed"]
    assert json.loads(delivered[0]["body"])["job"]["status"] == "canceled"


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []
    yield lambda failures, **kw: made.append(Receiver(failures, **kw)) or made[-1]
    for receiver in made:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def client_app(hooked: Settings) -> Iterator[Flask]:
    app = create_app(hooked)
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


class Resolver:
    """socket.getaddrinfo answering scripted addresses for some names: each lookup of a name
    takes its next answer (the last one repeats); other names go to the real resolver."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]):
        self.answers = answers
        self.lookups: dict[str, int] = dict.fromkeys(answers, 0)
        self.real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        script = self.answers[host]
        addresses = script[min(self.lookups[host], len(script) - 1)]
        self.lookups[host] += 1
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port or 0, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
            for a in addresses
        ]


@pytest.mark.parametrize("order", [["93.184.215.14", "10.0.0.5"], ["10.0.0.5", "93.184.215.14"]])
def test_a_host_with_one_public_and_one_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, order: list[str]
) -> None:
    Resolver(monkeypatch, {"mixed.example.test": [order]})
    with pytest.raises(WebhookRefused, match="resolves to 10.0.0.5, a loopback, private"):
        check_target("https://mixed.example.test/hook")


class Direct:
    """Deliveries made here, by calling `deliver` as the webhooks worker does, to jobs of the
    test database."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], storage: Storage):
        self.settings, self.sessions, self.storage = settings, sessions, storage

    def deliver(self, url: str, **settings: Any) -> bool:
        """Make a job whose webhook goes to `url` and deliver its `started` event."""
        with self.sessions() as session:
            job = make_job(session, self.storage, webhook_url=url, webhook_events=["started"])
            made = job_event(job, "started")
        assert made is not None
        changed = self.settings.model_copy(update=settings)
        return deliver(self.sessions, changed, str(job.id), *made)


@pytest.fixture
def direct(settings: Settings, sessions: sessionmaker[Session], storage: Storage) -> Direct:
    return Direct(settings, sessions, storage)


def test_a_delivery_connects_to_the_address_that_was_checked(
    direct: Direct, session: Session, receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = receivers(failures=0)
    # The first lookup (the check) answers the receiver's address; any later one answers an
    # address where nothing listens, which a second lookup to connect would get.
    resolver = Resolver(monkeypatch, {"hooks.rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    url = f"http://me:p%40ss@hooks.rebind.test:{receiver.port}/hooks/oneiro?x=1"
    assert direct.deliver(url, webhook_allow_private=True) is True
    assert resolver.lookups["hooks.rebind.test"] == 1
    [delivery] = receiver.deliveries
    # The name, not the address, in the Host header; the path and query as given; the URL's
    # credentials as Basic auth, as any HTTP client sends them.
    assert delivery["host"] == f"hooks.rebind.test:{receiver.port}"
    assert delivery["path"] == "/hooks/oneiro?x=1"
    assert delivery["authorization"] == "Basic " + base64.b64encode(b"me:p@ss").decode()
    assert_signed_as_documented(tenant_named(session).webhook_secret, delivery)


def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_not_called(
    direct: Direct, receivers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = receivers(failures=0)
    # Public when checked, loopback when looked up again: the classic DNS rebinding.
    resolver = Resolver(monkeypatch, {"hooks.rebind.test": [["93.184.215.14"], ["127.0.0.1"]]})
    # Tests reach only this machine: the connection to the public address is refused here,
    # before any packet leaves, and recorded.
    attempted: list[str] = []
    connect = pinned_http._DeadlineSocket.connect

    def connect_here_only(sock: socket.socket, address: Any) -> None:
        attempted.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError("tests reach only this machine")
        connect(sock, address)

    monkeypatch.setattr(pinned_http._DeadlineSocket, "connect", connect_here_only)
    assert not direct.settings.webhook_allow_private
    with pytest.raises(DeliveryFailed):
        direct.deliver(f"http://hooks.rebind.test:{receiver.port}/hook", webhook_timeout=1.0)
    assert resolver.lookups["hooks.rebind.test"] == 1
    assert attempted == ["93.184.215.14"]  # the checked address, not the rebound one
    assert receiver.deliveries == []


def test_the_check_at_delivery_time_refuses_a_name_that_changed_since_submit(
    settings: Settings,
    client: FlaskClient,
    sessions: sessionmaker[Session],
    receivers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = receivers(failures=0)
    resolver = Resolver(monkeypatch, {"hooks.moving.test": [["93.184.215.14"]]})
    url = f"http://hooks.moving.test:{receiver.port}/hook"
    answer = submit(client, image_bytes(), webhook=json.dumps({"url": url}))
    assert answer.status_code == 202  # public when submitted
    job_id = answer.get_json()["id"]
    resolver.answers["hooks.moving.test"] = [["127.0.0.1"]]  # loopback by the time it is sent
    with sessions() as session:
        made = job_event(session.get_one(Job, uuid.UUID(job_id)), "started")
    assert made is not None
    assert not settings.webhook_allow_private
    assert deliver(sessions, settings, job_id, *made) is False  # dropped for good
    assert receiver.deliveries == []


def test_redirects_are_not_followed(direct: Direct, receivers: Any) -> None:
    elsewhere = receivers(failures=0)
    receiver = receivers(failures=0, redirect=elsewhere.url)
    with pytest.raises(DeliveryFailed, match="answered 302"):
        direct.deliver(receiver.url, webhook_allow_private=True)
    assert len(receiver.deliveries) == 1
    assert elsewhere.deliveries == []


class RawTarget(socketserver.ThreadingTCPServer):
    """A TCP server that answers each connection with `answer(connection, server)`; it counts
    the connections open now and the bytes it managed to send."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, answer: Callable[[socket.socket, RawTarget], None]) -> None:
        self.answer = answer
        self.open = 0
        self.most = 0  # the most connections open at once
        self.sent = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/hook"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        try:
            request.recv(65536)  # the request; small enough to come in one piece
            self.answer(request, self)
        except OSError:
            pass  # the client hung up: what the tests want
        finally:
            with self.lock:
                self.open -= 1

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        with self.lock:
            self.sent += len(data)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.shutdown()
        super().__exit__(*exc)


def drip(head: bytes, every: float = 0.25, for_s: float = 30.0) -> Any:
    """An answer that sends `head`, then one byte every `every` seconds for `for_s` seconds."""

    def answer(connection: socket.socket, server: RawTarget) -> None:
        server.send(connection, head)
        end = time.monotonic() + for_s
        while time.monotonic() < end and not server.stop.wait(every):
            server.send(connection, b"a")

    return answer


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nX-Slow: ", id="headers"),
        pytest.param(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n", id="error-body"),
    ],
)
def test_a_target_that_drips_its_answer_fails_within_the_total_deadline(
    direct: Direct, head: bytes
) -> None:
    # One byte every 0.25 s: a timeout per read (requests' timeout) would never fire.
    with RawTarget(drip(head)) as target:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed, match="within 1.5s"):
            direct.deliver(target.url, webhook_allow_private=True, webhook_timeout=1.5)
        took = time.monotonic() - started
        assert target.sent > len(head)  # it was dripping when the delivery gave up
    assert 1.4 < took < 2.5


def flood(status: int, size: int = 256 * 1024 * 1024) -> Any:
    """An answer of `status` with a body of `size` bytes, sent as fast as the client reads."""

    def answer(connection: socket.socket, server: RawTarget) -> None:
        server.send(connection, f"HTTP/1.1 {status} X\r\nContent-Length: {size}\r\n\r\n".encode())
        chunk = b"\0" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            server.send(connection, chunk)

    return answer


@pytest.mark.parametrize("status", [200, 500])
def test_a_huge_answer_is_not_read(direct: Direct, status: int) -> None:
    with RawTarget(flood(status)) as target:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed) if status == 500 else contextlib.nullcontext():
            direct.deliver(target.url, webhook_allow_private=True)
        took = time.monotonic() - started
        wait_for(lambda: target.open == 0, 10, "the target to see the connection closed")
    assert took < 2
    # Of 256 MiB, what the sockets' buffers took before the delivery hung up, no more.
    assert target.sent < 32 * 1024 * 1024


def test_https_to_the_pinned_address_keeps_the_name_for_sni_and_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    seen: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("hooks.pinned.test").configure_cert(context)

    def note_sni(_sock: Any, name: str | None, _context: Any) -> None:
        seen["sni"] = name

    context.sni_callback = note_sni
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    Resolver(
        monkeypatch,
        {"hooks.pinned.test": [["127.0.0.1"], ["127.0.0.2"]], "other.test": [["127.0.0.1"]]},
    )
    try:
        target = resolve_target(f"https://hooks.pinned.test:{port}/hook", allow_private=True)
        status, _ = post_event(target, b"{}", {"Content-Length": "2"}, 5.0, cafile=str(ca_file))
        assert status == 204
        assert seen == {"sni": "hooks.pinned.test", "host": f"hooks.pinned.test:{port}"}
        # The certificate is checked against the name in the URL, not the address.
        wrong = resolve_target(f"https://other.test:{port}/hook", allow_private=True)
        with pytest.raises(ssl.SSLCertVerificationError):
            post_event(wrong, b"{}", {}, 5.0, cafile=str(ca_file))
    finally:
        server.shutdown()
        server.server_close()


def hold(for_s: float) -> Any:
    """An answer that keeps the request waiting `for_s` seconds, then answers 204."""

    def answer(connection: socket.socket, server: RawTarget) -> None:
        if not server.stop.wait(for_s):
            server.send(connection, b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    return answer


def job_status(sessions: sessionmaker[Session], job_id: uuid.UUID) -> JobStatus:
    with sessions() as session:
        return session.get_one(Job, job_id).status


def test_slow_webhook_targets_do_not_delay_the_reaper(
    settings: Settings, sessions: sessionmaker[Session], storage: Storage, tmp_path: Path
) -> None:
    # Deliveries that wait up to a minute; a dead worker's job noticed within seconds.
    hooked, env = worker_settings(
        settings, webhook_timeout=60.0, lease_seconds=2.0, maintenance_interval=0.5
    )
    celery = create_celery(hooked)
    dead = {"status": JobStatus.RUNNING, "attempt": 1, "worker": "killed:1"}
    endless = drip(b"HTTP/1.1 ", for_s=300)  # longer than the test: only the deadline ends it
    with background_workers(hooked, env, tmp_path), RawTarget(endless) as slow:
        with sessions() as session:
            # The maintenance worker is up once it has put back a first dead worker's job.
            warm = make_job(session, storage, heartbeat_at=utcnow() - timedelta(hours=1), **dead)
            wait_for(lambda: job_status(sessions, warm.id) == JobStatus.QUEUED, 60, "the reaper")
            # More slow deliveries than the webhooks worker has threads, all waiting; each of
            # a tenant of its own, as one tenant's take at most its share of the threads.
            for n in range(WEBHOOK_THREADS + 8):
                job = make_job(
                    session,
                    storage,
                    tenant_id=tenant_named(session, f"tenant-{n}").id,
                    status=JobStatus.CANCELED,
                    finished_at=utcnow(),
                    webhook_url=slow.url,
                    webhook_events=["completed"],
                )
                send_event(celery, session, job.id, "completed")
            wait_for(lambda: slow.open >= WEBHOOK_THREADS, 60, "every webhook thread busy")
            # A worker is killed mid-render: its job's heartbeat stops now.
            killed = make_job(session, storage, heartbeat_at=utcnow(), **dead)
        started = time.monotonic()
        wait_for(
            lambda: job_status(sessions, killed.id) == JobStatus.QUEUED,
            30,
            "the reaper to put back the killed worker's job",
            every=0.1,
        )
        took = time.monotonic() - started
        assert slow.open >= WEBHOOK_THREADS  # the slow deliveries are still in flight
    celery.close()
    # The lease, then one maintenance round, with room for a busy machine.
    assert took < hooked.lease_seconds + 2 * hooked.maintenance_interval + 3


def test_the_reaper_sends_completed_and_a_failed_job_retried_then_canceled_sends_another(
    settings: Settings,
    sessions: sessionmaker[Session],
    receivers: Any,
    tmp_path: Path,
) -> None:
    receiver = receivers(failures=0)
    hooked, env = worker_settings(settings, lease_seconds=1.0, maintenance_interval=0.5)
    app = create_app(hooked)
    client = authed_client(app)
    webhook = json.dumps({"url": receiver.url, "events": ["completed"]})
    job_id = submit(client, image_bytes(), webhook=webhook).get_json()["id"]
    # Its worker claimed it for the last allowed time and was killed: no heartbeat since.
    with sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id))
            .values(
                status=JobStatus.RUNNING,
                attempt=hooked.max_attempts,
                worker="killed:1",
                started_at=utcnow() - timedelta(hours=1),
                heartbeat_at=utcnow() - timedelta(hours=1),
            )
        )
    with background_workers(hooked, env, tmp_path):
        wait_for(receiver.delivered, 60, "the completed event of the job the reaper failed")
        # Retried, then canceled before any worker claims it: the same attempt ends again.
        assert client.post(f"/v1/jobs/{job_id}/retry").status_code == 202
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        wait_for(lambda: len(receiver.delivered()) == 2, 30, "the second completed event")
        time.sleep(0.5)  # nothing else follows
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()
    bodies = [json.loads(d["body"]) for d in receiver.deliveries]
    assert [b["job"]["status"] for b in bodies] == ["failed", "canceled"]
    assert "giving up" in bodies[0]["job"]["error"]
    assert [b["job"]["attempt"] for b in bodies] == [hooked.max_attempts] * 2
    # Two events, two ids: a receiver that de-duplicates by id keeps both.
    ids = [d["id"] for d in receiver.deliveries]
    assert len(set(ids)) == 2 and ids == [b["id"] for b in bodies]


def test_a_delivery_is_given_up_after_max_attempts(
    hooked: Settings, client_app: Flask, receivers: Any, tmp_path: Path
) -> None:
    receiver = receivers(failures=1000)
    cancel_with_webhook(client_app, receiver.url)
    max_attempts = hooked.webhook_max_attempts
    wait_for(lambda: len(receiver.deliveries) >= max_attempts, 30, "every attempt")
    # A further attempt would come after the next back-off (0.3 s doubled twice: 1.2 s).
    time.sleep(3 * hooked.webhook_backoff * 2 ** (max_attempts - 1))
    assert len(receiver.deliveries) == max_attempts
    assert len({d["id"] for d in receiver.deliveries}) == 1
    log = (tmp_path / "webhooks.log").read_text()
    assert f"given up after {max_attempts} attempts" in log


def test_progress_events_are_spaced_by_the_progress_interval(
    hooked: Settings,
    runtime: Runtime,
    session: Session,
    storage: Storage,
    receivers: Any,
) -> None:
    receiver = receivers(failures=0)
    interval = 0.5
    spaced = hooked.model_copy(update={"webhook_progress_interval": interval})
    job = make_job(
        session,
        storage,
        params={"steps": 30, "octaves": 2, "seed": 7},
        webhook_url=receiver.url,
        webhook_events=["progress", "completed"],
    )
    runtime = dataclasses.replace(runtime, settings=spaced)
    started = time.monotonic()
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED  # progress written every batch
    took = time.monotonic() - started
    wait_for(lambda: any(d["event"] == "completed" for d in receiver.delivered()), 30, "completed")
    time.sleep(0.5)
    made = sorted(
        datetime.fromisoformat(json.loads(d["body"])["created_at"])
        for d in receiver.delivered()
        if d["event"] == "progress"
    )
    assert len(made) >= 2
    assert len(made) <= took / interval + 1
    gaps = [(b - a).total_seconds() for a, b in zip(made, made[1:], strict=False)]
    # (A millisecond for the wall clock of created_at against the monotonic clock of the worker.)
    assert min(gaps) >= interval - 0.001


def ended_with_webhook(
    session: Session, storage: Storage, tenant: str, url: str, celery: Celery
) -> uuid.UUID:
    """A canceled job of `tenant` whose webhook, `url`, asks for `completed`; that event sent."""
    job = make_job(
        session,
        storage,
        tenant_id=tenant_named(session, tenant).id,
        status=JobStatus.CANCELED,
        finished_at=utcnow(),
        webhook_url=url,
        webhook_events=["completed"],
    )
    send_event(celery, session, job.id, "completed")
    return job.id


def test_one_tenants_slow_receiver_leaves_the_other_tenants_events_a_thread(
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    receivers: Any,
    tmp_path: Path,
) -> None:
    # Measured before: 40 jobs to a receiver holding each request 30 s took every thread, and
    # another tenant's events waited 16 s. More held deliveries than the worker has threads:
    # without a share, the other tenant's event would wait the whole hold.
    share = 4
    hooked, env = worker_settings(settings, webhook_timeout=120.0, webhook_tenant_deliveries=share)
    celery = create_celery(hooked)
    fast = receivers(failures=0)
    with background_workers(hooked, env, tmp_path), RawTarget(hold(60)) as slow:
        with sessions() as session:
            for _ in range(WEBHOOK_THREADS + 8):
                ended_with_webhook(session, storage, "slow", slow.url, celery)
            wait_for(lambda: slow.open >= share, 60, "the slow tenant's share of deliveries")
            ended_with_webhook(session, storage, "other", fast.url, celery)
            wait_for(fast.delivered, 40, "the other tenant's event")
        # Delivered while the slow receiver still held every request it was sent, and never
        # more than the share of them at once.
        assert slow.sent == 0
        assert slow.most == share
    celery.close()


def test_a_receiver_that_fails_every_event_is_reported_once_until_it_answers_again(
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    receivers: Any,
    tmp_path: Path,
) -> None:
    hooked, env = worker_settings(settings, webhook_backoff=0.2, webhook_max_attempts=2)
    celery = create_celery(hooked)
    receiver = receivers(failures=2)  # every event fails both its attempts
    events = 6
    with background_workers(hooked, env, tmp_path) as log_path, sessions() as session:
        for _ in range(events):
            ended_with_webhook(session, storage, "t", receiver.url, celery)
        wait_for(lambda: len(receiver.deliveries) == 2 * events, 60, "every attempt")
        wait_for(lambda: "given up after 2 attempts" in log_path.read_text(), 30, "a give-up")
        assert is_down(hooked, receiver.url)
        # The receiver answers again: the next event is delivered, and the target is up.
        receiver.failures = 0
        ended_with_webhook(session, storage, "t", receiver.url, celery)
        wait_for(receiver.delivered, 30, "the event after the receiver came back")
        wait_for(lambda: not is_down(hooked, receiver.url), 10, "the target marked up")
        wait_for(lambda: "answers again" in log_path.read_text(), 10, "the recovery's line")
        log = log_path.read_text()
    celery.close()
    assert len(receiver.deliveries) == 2 * events + 1  # nothing given up was tried again
    # Six events given up, one line: the first; the rest at debug level.
    assert log.count("given up") == 1


def test_a_tenants_delivery_slots_are_shared_by_every_worker_given_back_and_expire(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    limited = settings.model_copy(update={"webhook_tenant_deliveries": 2, "webhook_timeout": 0.5})
    monkeypatch.setattr(delivery_limits, "SLOT_GRACE_S", 0.0)
    tenant = uuid.uuid4()
    with (
        tenant_slot(limited, tenant) as first,
        tenant_slot(limited, tenant) as second,
        tenant_slot(limited, tenant) as third,
        tenant_slot(limited, None) as others,
    ):
        assert (first, second, third, others) == (True, True, False, True)
    with tenant_slot(limited, tenant) as again:
        assert again  # given back when their deliveries ended
    # Slots whose holders died (never given back) free themselves after the deadline.
    held = [tenant_slot(limited, tenant) for _ in range(2)]
    assert [slot.__enter__() for slot in held] == [True, True]
    with tenant_slot(limited, tenant) as full:
        assert not full
    time.sleep(limited.webhook_timeout + 0.2)
    with tenant_slot(limited, tenant) as expired:
        assert expired
    assert len(held) == 2  # still referenced: their finally never ran
