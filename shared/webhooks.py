"""Webhooks: what a job may ask for, how deliveries are signed, and which targets are refused.

A delivery is a JSON body POSTed with these headers:

    Oneiro-Event-Id: <stable id: the same on every retry of one event>
    Oneiro-Event: started | progress | completed
    Oneiro-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the tenant's
                      webhook secret>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares it in
constant time, and refuses timestamps too old (replays); `verify_signature` does exactly that.

A delivery connects to the very addresses that were checked (a second lookup could answer with
another: DNS rebinding), gives up at one total deadline whatever the target does (a target that
drips a byte at a time would otherwise hold its worker for ever), and reads at most
ANSWER_READ_LIMIT bytes of the answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import time
import uuid
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from celery import Celery
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.delivery_limits import mark_up, tenant_slot
from shared.models import Job, Tenant, utcnow
from shared.pinned_http import Target, post_event
from shared.queue import WEBHOOK_TASK
from shared.serializer import iso, webhook_job_json
from shared.settings import Settings

log = logging.getLogger(__name__)

# Event ids are UUIDs derived from what makes the event itself: the job, its attempt, the event,
# and the progress (for `progress`) or the ending's status and time (for `completed`). The same
# event has the same id on every delivery attempt, and were it emitted twice (a redelivered
# message), too; two endings of one attempt (failed, retried, canceled before any worker
# claimed it) are two events with two ids.
EVENT_NAMESPACE = uuid.UUID("5f0c7a4e-43a4-4d0b-9a51-0a8f3c2f6e11")

Event = Literal["started", "progress", "completed"]
EVENTS: tuple[Event, ...] = ("started", "progress", "completed")
SIGNATURE_HEADER = "Oneiro-Signature"
EVENT_ID_HEADER = "Oneiro-Event-Id"
EVENT_HEADER = "Oneiro-Event"


class WebhookSpec(BaseModel):
    """Where a job's events are POSTed, and which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[
        AnyHttpUrl,
        UrlConstraints(max_length=2048, allowed_schemes=["http", "https"]),
        Field(description="http(s) URL that receives the events."),
    ]
    events: Annotated[
        list[Event],
        Field(min_length=1, max_length=3, description="Events to send; all three by default."),
    ] = list(EVENTS)


class WebhookRefused(ValueError):
    """The target is not one the service may call; the message says why."""


# IPv6 ranges whose last 32 bits are an IPv4 address that a gateway or a dual stack connects
# to: NAT64 (RFC 6052), IPv4-compatible (RFC 4291, deprecated) and IPv4-translated (RFC 2765).
# Python calls most of these global whatever IPv4 address they carry.
_LOW_32_BITS_IPV4 = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96")
)
# Local-use NAT64 (RFC 8215) translates into the operator's own network.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    found = [v4 for v4 in (address.ipv4_mapped, address.sixtofour) if v4 is not None]
    if address.teredo is not None:
        found.extend(address.teredo)  # the Teredo server and the client's (public) address
    if any(address in network for network in _LOW_32_BITS_IPV4):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a webhook may not go to `address`, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return f"{address}, a local-use NAT64 address"
        for v4 in embedded_ipv4(address):
            if refusal(v4) is not None:
                return f"{address}, which embeds {v4}, a loopback, private or reserved address"
    if not address.is_global or address.is_multicast:
        return f"{address}, a loopback, private, link-local or reserved address"
    return None


def resolve_target(url: str, allow_private: bool = False) -> Target:
    """Resolve the URL's host once and refuse it when any of its addresses is a loopback,
    private, link-local or otherwise non-public one (unless allowed), so the service cannot be
    aimed at its own network.

    Every address is checked: one public address does not excuse a private one. A delivery
    connects only to the addresses returned here.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise WebhookRefused("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise WebhookRefused(f"the host {host!r} does not resolve ({exc})") from None
    addresses = tuple(dict.fromkeys((family, sockaddr) for family, *_, sockaddr in infos))
    if not allow_private:
        for _, sockaddr in addresses:
            why = refusal(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
            if why is not None:
                raise WebhookRefused(
                    f"the host {host!r} resolves to {why}; webhooks go to public addresses "
                    "only (ONEIRO_WEBHOOK_ALLOW_PRIVATE=true allows others)"
                )
    authority = f"[{host}]" if ":" in host else host
    authorization = None
    if parts.username is not None:
        # Credentials in the URL are sent as Basic auth, as an HTTP client would.
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    return Target(
        scheme=parts.scheme,
        host=host,
        port=port,
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        host_header=authority + (f":{parts.port}" if parts.port else ""),
        authorization=authorization,
        addresses=addresses,
    )


def check_target(url: str, allow_private: bool = False) -> None:
    """Refuse a URL the service may not call (see resolve_target)."""
    resolve_target(url, allow_private)


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Oneiro-Signature header value for `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(secret: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """Whether `header` is a valid signature of `body`, made within `tolerance` seconds."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class DeliveryFailed(RuntimeError):
    """The target did not take the event (no answer, or not a 2xx); it is retried."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}{reason}")
        self.url = url


class DeliveryDeferred(RuntimeError):
    """The job's tenant has its share of deliveries in flight (shared/delivery_limits.py): the
    event waits a moment, and this is no failed attempt."""


def job_event(job: Job, event: Event) -> tuple[str, str] | None:
    """The (event id, JSON body) of `event` for `job`, or None when the job asks for no such
    event."""
    if not job.webhook_url or event not in (job.webhook_events or EVENTS):
        return None
    shown = webhook_job_json(job)
    identity = f"{job.id}:{job.attempt}:{event}"
    if event == "progress":
        identity += f":{shown['progress'].get('fraction', 0.0)}"
    elif event == "completed":
        ended = job.finished_at.isoformat() if job.finished_at else ""
        identity += f":{job.status.value}:{ended}"
    event_id = str(uuid.uuid5(EVENT_NAMESPACE, identity))
    body = {
        "id": event_id,
        "type": event,
        "created_at": iso(utcnow()),
        "job": shown,
    }
    return event_id, json.dumps(body)


def send_event(celery: Celery, session: Session, job_id: uuid.UUID, event: Event) -> None:
    """Queue `event` of the job for delivery, if the job asked for it.

    Best effort: were Redis away, the event is logged and dropped, never the job's progress.
    """
    job = session.get(Job, job_id, populate_existing=True)
    made = job_event(job, event) if job is not None else None
    if made is None:
        return
    try:
        celery.send_task(WEBHOOK_TASK, args=[str(job_id), *made], retry=False)
    except Exception:
        log.warning("job %s: webhook event %s not queued", job_id, event, exc_info=True)


def deliver(
    sessions: sessionmaker[Session], settings: Settings, job_id: str, event_id: str, body: str
) -> bool:
    """POST one event to the job's webhook, signed with its tenant's secret.

    Returns False when the event is dropped for good (the job is gone, or its target now
    resolves to an address we refuse: DNS may have changed since submit). Raises
    DeliveryFailed when the target should be tried again, DeliveryDeferred when the tenant has
    its share of deliveries in flight.
    """
    # A short read: no database connection is held while the target takes its time.
    with sessions() as session:
        row = session.execute(
            select(Job.webhook_url, Job.tenant_id, Tenant.webhook_secret)
            .join(Tenant, Tenant.id == Job.tenant_id)
            .where(Job.id == uuid.UUID(job_id))
        ).one_or_none()
    if row is None or row.webhook_url is None:
        return False
    try:
        target = resolve_target(row.webhook_url, settings.webhook_allow_private)
    except WebhookRefused as exc:
        log.error("job %s: webhook %s refused: %s", job_id, event_id, exc)
        return False
    data = body.encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "oneiro-webhooks",
        EVENT_ID_HEADER: event_id,
        EVENT_HEADER: json.loads(body)["type"],
        SIGNATURE_HEADER: sign(row.webhook_secret, data),
    }
    url = row.webhook_url
    with tenant_slot(settings, row.tenant_id) as admitted:
        if not admitted:
            raise DeliveryDeferred(f"tenant {row.tenant_id} has its share of deliveries in flight")
        try:
            status, head = post_event(target, data, headers, settings.webhook_timeout)
        except TimeoutError as exc:
            # Raised by the deadline itself or by a socket wait it armed with the time left.
            raise DeliveryFailed(
                url, f": no complete answer within {settings.webhook_timeout:g}s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryFailed(url, f": {type(exc).__name__}: {exc}") from exc
    if not 200 <= status < 300:
        raise DeliveryFailed(url, f" answered {status}: {head[:200]!r}")
    if mark_up(settings, url):
        log.info("webhook target %s answers again: its events are reported as before", url)
    return True


def backoff(settings: Settings, retries: int) -> float:
    """Seconds before the next delivery attempt: doubling from webhook_backoff, at most 1 h."""
    return float(min(settings.webhook_backoff * 2**retries, 3600.0))
