"""HTTP to the addresses a name resolved to when it was checked, within one total deadline.

A second lookup of the name could answer with another address (DNS rebinding), so a request
connects only to the checked ones; every socket wait gets only the time left, so a target that
drips a byte at a time cannot hold the caller for ever; at most ANSWER_READ_LIMIT bytes of an
answer are read. Webhook deliveries (shared/webhooks.py) are its one user.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import certifi


@dataclass(frozen=True)
class Target:
    """A webhook URL taken apart, with the addresses its host resolved to when checked."""

    scheme: str
    host: str
    port: int
    # What the request line asks for (path and query), and the Host header.
    path: str
    host_header: str
    authorization: str | None
    # (family, sockaddr) pairs from getaddrinfo, in its order: connect to these and no others.
    addresses: tuple[tuple[int, tuple[Any, ...]], ...]


# Of the target's answer only the status line, the headers and this much of the body are read
# (for the log of a refusal): a target that answers a huge body costs nothing.
ANSWER_READ_LIMIT = 4096


class _Deadline:
    """One delivery's time: every socket operation may take what is left of it, no more."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"past the deadline of {self.seconds:g}s")
        return left


class _DeadlineSocket(socket.socket):
    """A socket whose every wait ends at the delivery's deadline.

    A per-operation timeout restarts with each byte, so a target that drips one byte a second
    would hold a delivery for ever; arming each operation with the time left bounds the whole.
    """

    deadline: _Deadline

    def _arm(self) -> None:
        self.settimeout(self.deadline.left())

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        self._arm()
        return super().recv(*args, **kwargs)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().recv_into(*args, **kwargs)

    def send(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().send(*args, **kwargs)

    def sendall(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        super().sendall(*args, **kwargs)


class _DeadlineSSLSocket(_DeadlineSocket, ssl.SSLSocket):
    """The TLS socket over a _DeadlineSocket: the handshake and every read share the deadline."""

    def do_handshake(self, *args: Any, **kwargs: Any) -> None:
        self._arm()
        super().do_handshake(*args, **kwargs)


@functools.cache
def _tls_context(cafile: str) -> ssl.SSLContext:
    # The CA bundle `requests` uses, so the certificates trusted do not depend on the host.
    context = ssl.create_default_context(cafile=cafile)
    context.sslsocket_class = _DeadlineSSLSocket
    return context


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to the target's checked addresses, never to a new lookup of its name.

    The name still goes in the Host header, in TLS's SNI and into certificate verification, so
    pinning the address changes nothing else (the approach of urllib3's own `_dns_host`, done
    on the standard library's connection, whose `connect` is the one place a socket is made).
    """

    def __init__(self, target: Target, deadline: _Deadline, cafile: str) -> None:
        super().__init__(target.host, target.port)
        self.target, self.deadline, self.cafile = target, deadline, cafile

    def connect(self) -> None:
        """Connect to the first checked address that answers, then speak TLS for https."""
        errors = []
        for family, sockaddr in self.target.addresses:
            sock = _DeadlineSocket(family, socket.SOCK_STREAM)
            sock.deadline = self.deadline
            try:
                sock.settimeout(self.deadline.left())
                sock.connect(sockaddr)
                break
            except OSError as exc:
                sock.close()
                errors.append(f"{sockaddr[0]}: {exc}")
        else:
            raise ConnectionError("could not connect: " + "; ".join(errors))
        self.sock = sock  # so that close() closes it, whatever happens next
        if self.target.scheme == "https":
            tls = _tls_context(self.cafile).wrap_socket(
                sock, server_hostname=self.target.host, do_handshake_on_connect=False
            )
            assert isinstance(tls, _DeadlineSSLSocket)  # the context's socket class
            self.sock = tls
            tls.deadline = self.deadline
            tls.do_handshake()


def post_event(
    target: Target,
    data: bytes,
    headers: dict[str, str],
    deadline_s: float,
    cafile: str | None = None,
) -> tuple[int, bytes]:
    """POST `data` to the checked target within `deadline_s` seconds in all; the answer's
    status and at most ANSWER_READ_LIMIT bytes of its body. Redirects are not followed (a 3xx
    is just an answer): they could point at an address the check would refuse."""
    connection = _PinnedConnection(target, _Deadline(deadline_s), cafile or certifi.where())
    headers = {**headers, "Host": target.host_header, "Connection": "close"}
    if target.authorization:
        headers["Authorization"] = target.authorization
    try:
        connection.request("POST", target.path, body=data, headers=headers)
        answer = connection.getresponse()
        status = answer.status
        head = b"" if 200 <= status < 300 else answer.read(ANSWER_READ_LIMIT)
    finally:
        # Closed unread: the rest of the body is the target's problem, not ours.
        connection.close()
    return status, head
