"""Webhooks: what a job may ask for, how deliveries are signed, and which targets are refused.

A delivery is a JSON body POSTed with these headers:

    Oneiro-Event-Id: <stable id: the same on every retry of one event>
    Oneiro-Event: started | progress | completed
    Oneiro-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the tenant's
                      webhook secret>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares it in
constant time, and refuses timestamps too old (replays); `verify_signature` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import time
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

EVENTS = ("started", "progress", "completed")
Event = Literal["started", "progress", "completed"]
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


def check_target(url: str, allow_private: bool = False) -> None:
    """Refuse a URL whose host resolves to a loopback, private, link-local or otherwise
    non-public address (unless allowed), so the service cannot be aimed at its own network.

    Every address the name resolves to is checked: one public address does not excuse a
    private one.
    """
    host = urlsplit(url).hostname
    if not host:
        raise WebhookRefused("the URL has no host")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the host {host!r} does not resolve ({exc})") from None
    if allow_private:
        return
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"the host {host!r} resolves to {address}, a loopback, private, link-local or "
                "reserved address; webhooks go to public addresses only "
                "(ONEIRO_WEBHOOK_ALLOW_PRIVATE=true allows others)"
            )


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
