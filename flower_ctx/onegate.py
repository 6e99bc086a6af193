"""OneGate REST client: the calls flower-ctx needs, bounded in time, with the token kept secret.

The wire format follows the official ``onegate`` CLI (research/opennebula-contracts.md sections 1 and
8): ``X-ONEGATE-TOKEN``/``X-ONEGATE-VMID`` on every request, updates as a form-encoded
``data=<"K=V\\nK=V">&type=1`` ``PUT /vm``, deletes as ``type=2`` with one name per request.

Every call is bounded in time and size by the calling thread alone: one deadline per call enforced
on the socket (each connect, send and receive gets only what is left of it), answers capped at
``MAX_ANSWER_BYTES`` and read by ``http.client`` (whose header count and line length are bounded),
one connection per exchange closed before the call returns. No thread or socket outlives a call,
however the server trickles, stalls or streams. Answers are typed on the way in: a document of an
unexpected shape is a :class:`OneGateProtocolError` ("OneGate unusable"), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import random
import re
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from .errors import EXIT_BAD_INPUT, OneGateError
from .model import OneGateAccess

log = logging.getLogger(__name__)

# Characters the server's naive quoting (escape_attr) cannot carry: it breaks the template parser.
FORBIDDEN_VALUE_CHARS = frozenset(',"\\[]\n\r')
# OpenNebula attribute names (the core upper-cases them).
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VMID_RE = re.compile(r"^[0-9]+$")
# Longest server message we quote back in an error (they are one-liners; HTML junk is cut).
_MAX_SERVER_TEXT = 200
# Largest answer read: a service of a few hundred VMs with full templates (?extended=true) fits.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class OneGateNotConfigured(OneGateError):
    """No endpoint, VMID or token: OneGate cannot be used on this VM."""


class OneGateValueError(OneGateError):
    """A value cannot be sent: the server would break on it. Nothing was sent."""

    exit_code = EXIT_BAD_INPUT


class OneGateRefused(OneGateError):
    """The server answered 4xx. ``status`` and ``server_message`` (its one-line text, token-free)
    let callers tell a transient refusal from a permanent one."""

    def __init__(self, message: str, status: int = 0, server_message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class OneGateAuthError(OneGateRefused):
    """401: token or VMID refused."""


class OneGateNotInService(OneGateRefused):
    """400: the VM is not in a OneFlow service, or the target VM is not in the caller's service."""


class OneGateForbidden(OneGateRefused):
    """403: a restricted attribute or an action the OneGate administrator disabled."""


class OneGateNotFound(OneGateRefused):
    """404: the VM or service does not exist (or the owner cannot see it)."""


class OneGateUnavailable(OneGateError):
    """Unreachable, timed out or answering 5xx after the bounded retries."""


class OneGateProtocolError(OneGateError):
    """An answer that does not follow the OneGate API (e.g. not JSON)."""


# -- typed views of OneGate documents ---------------------------------------------------------------
# OneGate's JSON comes from OpenNebula's XML: a one-element list may arrive as the element itself, and
# every scalar is a string. Anything else is an answer flower-ctx cannot use: a protocol error.


def _unusable(what: str, value: Any, expected: str) -> OneGateProtocolError:
    return OneGateProtocolError(
        f"OneGate answered with an unexpected document ({what} is {type(value).__name__}, expected {expected}): "
        "OneGate unusable"
    )


def obj(value: Any, what: str, *, optional: bool = True) -> dict[str, Any]:
    """``value`` as an object; absent (None) gives {} when ``optional``."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise _unusable(what, value, "an object")
    return value


def items(value: Any, what: str) -> list[Any]:
    """``value`` as a list: absent is [], a lone object is a one-element list (XML-to-JSON)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise _unusable(what, value, "a list")
    return value


def text(value: Any, what: str) -> str | None:
    """A scalar attribute as text (None when absent); numbers are accepted as their decimal text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _unusable(what, value, "text")
    return str(value)


def check_name(name: str) -> str:
    """The attribute name, upper-cased as the core stores it; refuses names the template cannot hold."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise OneGateValueError(f"OneGate attribute name {name!r} is not valid (letters, digits, '_')")
    return name.upper()


def check_value(name: str, value: str) -> str:
    """Refuse values the OneGate server's quoting breaks on (empty, , " \\ [ ] newline)."""
    if not isinstance(value, str):
        raise OneGateValueError(f"OneGate attribute {name}: value must be text, got {type(value).__name__}")
    if value == "":
        raise OneGateValueError(
            f"OneGate attribute {name}: empty values are refused by OneGate; delete the attribute instead"
        )
    bad = sorted({c for c in value if c in FORBIDDEN_VALUE_CHARS})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise OneGateValueError(
            f"OneGate attribute {name}: value contains {shown}, which OneGate cannot store; "
            "send it base64-encoded (encode_value)"
        )
    return value


def encode_value(data: bytes | str) -> str:
    """Base64 (standard alphabet, one line) for values OneGate cannot carry as they are (PEM, lists)."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def decode_value(text: str) -> bytes:
    """The inverse of :func:`encode_value`; whitespace is ignored, anything else invalid raises."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise OneGateValueError("value is not valid base64") from None


def format_attrs(attrs: Mapping[str, str]) -> str:
    """``K=V`` lines joined by newlines, each name and value checked first (all or nothing)."""
    lines = []
    for name, value in attrs.items():
        key = check_name(name)
        lines.append(f"{key}={check_value(key, value)}")
    return "\n".join(lines)


class OneGateClient:
    """Calls to the OneGate server of this VM's zone.

    Every call is bounded: each attempt by ``timeout`` (connect and each read), the whole call by
    ``deadline`` seconds when given (else by ``retries``). Connection errors, timeouts and 5xx are
    retried ``retries`` times with exponential backoff and jitter; 4xx are not retried.
    """

    def __init__(
        self,
        access: OneGateAccess,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        deadline: float | None = None,
    ) -> None:
        missing = [
            what
            for what, ok in (
                ("ONEGATE_ENDPOINT", access.endpoint),
                ("VMID", access.vmid),
                ("token (one_env TOKENTXT or token.txt)", access.token),
            )
            if not ok
        ]
        if missing:
            raise OneGateNotConfigured(
                "OneGate is not available on this VM: missing " + ", ".join(missing) + " (set TOKEN=YES in CONTEXT)"
            )
        assert access.endpoint and access.vmid and access.token  # for the type checker
        if not _VMID_RE.match(access.vmid.strip()):
            raise OneGateNotConfigured(f"OneGate is not available: VMID {access.vmid!r} is not a number")
        self.endpoint = access.endpoint.strip().rstrip("/")
        from .values import onegate_url_ok

        if not onegate_url_ok(self.endpoint):
            raise OneGateNotConfigured(
                f"OneGate is not available: ONEGATE_ENDPOINT {self.endpoint!r} is not an http(s):// URL"
            )
        self.vmid = access.vmid.strip()
        self._token = access.token.reveal().decode("utf-8", "replace").strip()
        if not self._token:
            raise OneGateNotConfigured("OneGate is not available on this VM: the token is empty")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.deadline = deadline
        self.attempts = 0  # HTTP attempts made by this client (for reports and tests)

    def __repr__(self) -> str:
        return f"OneGateClient(endpoint={self.endpoint!r}, vmid={self.vmid!r}, token=********)"

    # -- public calls --------------------------------------------------------------------------

    def get_vm(self, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /vm``: this VM (``VM`` -> NAME, ID, STATE, LCM_STATE, USER_TEMPLATE, TEMPLATE)."""
        return self._json("GET", "/vm", deadline=deadline)

    def get_vm_by_id(self, vmid: int | str, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /vms/<id>``: another VM of the same service."""
        text = str(vmid).strip()
        if not _VMID_RE.match(text):
            raise OneGateValueError(f"VM id {vmid!r} is not a number")
        return self._json("GET", f"/vms/{text}", deadline=deadline)

    def get_service(self, extended: bool = False, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /service``: this VM's OneFlow service. The server treats any non-empty
        ``extended`` value as true, so the parameter is sent only when wanted."""
        params = {"extended": "true"} if extended else None
        return self._json("GET", "/service", params=params, deadline=deadline)

    def update_vm(self, attrs: Mapping[str, str], *, deadline: float | None = None) -> None:
        """Merge ``attrs`` into this VM's USER_TEMPLATE in one ``PUT /vm``. Empty mapping: no request."""
        data = format_attrs(attrs)
        if not data:
            return
        self._request("PUT", "/vm", form={"data": data, "type": "1"}, deadline=deadline)

    def delete_vm_attr(self, name: str, *, deadline: float | None = None) -> bool:
        """Delete one USER_TEMPLATE attribute. True when deleted, False when it was not there.

        OneGate answers a delete of an absent attribute with 500 (its text, "attribute not found",
        is hidden behind "Internal server error" since 7.1.80), so a 500 is never retried: the VM is
        read once to tell "already absent" from a real failure, which raises OneGateUnavailable.
        """
        key = check_name(name)
        try:
            self._request("PUT", "/vm", form={"data": key, "type": "2"}, deadline=deadline, absent_ok=True)
        except _AttributeAbsent:
            doc = self.get_vm(deadline=deadline)
            ut = obj(obj(doc.get("VM"), "VM").get("USER_TEMPLATE"), "VM.USER_TEMPLATE")
            if key in {str(k).upper() for k in ut}:
                raise OneGateUnavailable(f"OneGate PUT /vm: deleting {key} failed (HTTP 500) and it is still set") \
                    from None
            return False
        return True

    def redact(self, text: str) -> str:
        """``text`` with the token replaced (for messages built from foreign text)."""
        return text.replace(self._token, "********") if self._token else text

    def close(self) -> None:
        """Nothing to release: every exchange closes its own connection before returning."""

    # -- plumbing ------------------------------------------------------------------------------

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        body = self._request(method, path, **kw)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise OneGateProtocolError(
                f"OneGate {method} {path} answered with something that is not JSON: OneGate unusable"
            ) from None
        if not isinstance(doc, dict):
            raise OneGateProtocolError(
                f"OneGate {method} {path} answered with JSON that is not an object: OneGate unusable"
            )
        return doc

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        deadline: float | None = None,
        absent_ok: bool = False,
    ) -> str:
        budget = deadline if deadline is not None else self.deadline
        end = time.monotonic() + budget if budget is not None else None
        headers = {
            "X-ONEGATE-TOKEN": self._token,
            "X-ONEGATE-VMID": self.vmid,
            "Accept": "application/json",
        }
        data = None
        if form is not None:
            # urlencode quotes '+', '%', '=', newlines...: the server gets the exact text back.
            data = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        target = path + ("?" + urlencode(params) if params else "")
        what = f"OneGate {method} {path}"
        last = "no time left for an attempt"
        made = 0
        for attempt in range(self.retries + 1):
            timeout = self.timeout
            if end is not None:
                timeout = min(timeout, end - time.monotonic())
                if timeout <= 0.01:
                    break
            self.attempts += 1
            made += 1
            try:
                status, text = self._once(method, target, headers, data, timeout)
            except (OSError, http_client().HTTPException) as exc:
                last = _describe_exception(exc)
                log.debug("%s attempt %d failed: %s", what, attempt + 1, last)
            else:
                log.debug("%s attempt %d: HTTP %d", what, attempt + 1, status)
                if status < 300:
                    return text
                message = self._server_text(text)
                if status < 500:
                    raise self._client_error(status, message, what)
                if absent_ok and status == 500:
                    # A delete answered 500: "attribute not found" up to OneGate 7.0, a bare "Internal
                    # server error" from 7.1.80 on. Never retried blindly: the caller checks.
                    raise _AttributeAbsent()
                last = f"HTTP {status}" + (f" {message}" if message else "")
            if attempt < self.retries and not self._pause(attempt, end):
                break
        limit = f" within {budget:g} s" if budget is not None else ""
        raise OneGateUnavailable(
            f"{what} failed after {self._attempts_word(made)}{limit}: {last} (endpoint {self.endpoint})"
        )

    def _once(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        data: str | None,
        timeout: float,
    ) -> tuple[int, str]:
        """One HTTP exchange on a fresh connection that ends within ``timeout`` seconds, whatever the
        server does: the deadline is re-armed on the socket before every connect, send and receive,
        the answer is capped, and the connection is closed before returning (or raising)."""
        http = http_client()
        end = time.monotonic() + timeout
        parts = urlsplit(self.endpoint)
        https = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if https else 80)
        prefix = parts.path.rstrip("/")
        sock = _connect(host, port, end)
        conn = resp = None
        body = bytearray()
        try:
            if https:
                import ssl

                ctx = ssl.create_default_context()
                ctx.sslsocket_class = _ssl_socket_class()
                sock = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                sock._deadline = end  # type: ignore[attr-defined]
                sock.do_handshake()
            conn = http.HTTPConnection(host, port)
            conn.sock = sock  # already connected, deadline-armed
            conn.request(method, prefix + target, body=data, headers={**headers, "Connection": "close"})
            resp = conn.getresponse()
            declared = resp.getheader("Content-Length")
            if declared is not None and declared.strip().isascii() and declared.strip().isdigit() \
                    and int(declared.strip()[:20]) > MAX_ANSWER_BYTES:
                raise OneGateProtocolError(
                    f"OneGate answered with {declared.strip()[:20]} bytes, more than the {MAX_ANSWER_BYTES} "
                    "an answer may have: OneGate unusable"
                )
            while True:
                chunk = resp.read(min(65536, MAX_ANSWER_BYTES + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise OneGateProtocolError(
                        f"OneGate's answer is longer than {MAX_ANSWER_BYTES} bytes: OneGate unusable"
                    )
            return resp.status, body.decode("utf-8", "replace")
        finally:
            # An error kept by the caller keeps this frame: nothing in it may hold the socket or the body.
            body.clear()
            if resp is not None:
                resp.close()
            if conn is not None:
                conn.close()
            sock.close()

    def _pause(self, attempt: int, end: float | None) -> bool:
        """Sleep before the next attempt; False when the deadline leaves no room for one."""
        delay = self.backoff * (2**attempt) * random.uniform(0.5, 1.0)
        if end is not None and time.monotonic() + delay >= end - 0.01:
            return False
        time.sleep(delay)
        return True

    @staticmethod
    def _attempts_word(n: int) -> str:
        return "1 attempt" if n == 1 else f"{n} attempts"

    def _server_text(self, text: str) -> str:
        """The server's plain-text message, first line, bounded and without the token."""
        first = text.strip().splitlines()[0] if text.strip() else ""
        first = self.redact(first)
        return first[:_MAX_SERVER_TEXT]

    def _client_error(self, status: int, message: str, what: str) -> OneGateRefused:
        cls, text = self._client_error_text(status, message, what)
        return cls(text, status, message)

    def _client_error_text(self, status: int, message: str, what: str) -> tuple[type[OneGateRefused], str]:
        said = f" (server said: {message})" if message else ""
        if status == 401:
            return OneGateAuthError, (
                f"{what}: 401 OneGate refused the credentials{said}. The token (one_env TOKENTXT or "
                f"token.txt) or VMID {self.vmid} does not match this VM; check TOKEN=YES in CONTEXT and "
                "that the VM owner has a TOKEN_PASSWORD"
            )
        if status == 403:
            return OneGateForbidden, (
                f"{what}: 403 forbidden{said}. The attribute is restricted (SERVICE_ID, ROLE_NAME, "
                "SCHED_REQUIREMENTS) or the OneGate administrator disabled this action"
            )
        if status == 400:
            return OneGateNotInService, (
                f"{what}: 400{said}. This VM is not in a OneFlow service, or the target VM is not in "
                "its service (OneFlow may still be registering new VMs)"
            )
        if status == 404:
            return OneGateNotFound, f"{what}: 404 not found{said}"
        return OneGateRefused, f"{what}: HTTP {status}{said}"


class _AttributeAbsent(Exception):
    """Internal: a delete answered 500 (the attribute may already be absent)."""


def http_client() -> Any:
    """``http.client``, imported when a call is made (not at start-up)."""
    import http.client

    return http.client


class _DeadlineSocket(socket.socket):
    """A socket whose every blocking operation gets only what is left of one deadline."""

    _deadline: float = 0.0

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer in time")
        self.settimeout(left)

    def connect(self, address: Any) -> None:  # type: ignore[override]
        self._arm()
        super().connect(address)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._arm()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)


@functools.lru_cache(maxsize=1)
def _ssl_socket_class() -> type:
    """The TLS twin of :class:`_DeadlineSocket` (built on first use: ssl is imported only for https)."""
    import ssl

    class DeadlineSSLSocket(ssl.SSLSocket):
        _deadline: float = 0.0
        _arm = _DeadlineSocket._arm

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            self._arm()
            return super().recv(buflen, flags)

        def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
            self._arm()
            return super().recv_into(buffer, nbytes, flags)  # type: ignore[arg-type]

        def send(self, data: Any, flags: int = 0) -> int:
            self._arm()
            return super().send(data, flags)

        def sendall(self, data: Any, flags: int = 0) -> None:
            self._arm()
            super().sendall(data, flags)

        def do_handshake(self, block: bool = False) -> None:
            self._arm()
            super().do_handshake(block)

    return DeadlineSSLSocket


def _connect(host: str, port: int, end: float) -> _DeadlineSocket:
    """A TCP connection to ``host:port`` made before ``end``. Names are resolved by the system
    resolver, bounded by its own timeouts (OneGate endpoints are addresses in practice)."""
    last: OSError | None = None
    for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = _DeadlineSocket(family, kind, proto)
        sock._deadline = end
        try:
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
            if isinstance(exc, TimeoutError):
                break
    raise last or OSError(f"{host} has no address")


def _describe_exception(exc: BaseException) -> str:
    """A short, token-free description of a failed exchange (no headers are in these texts)."""
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the answer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "the endpoint's name does not resolve"
    if isinstance(exc, http_client().HTTPException):
        return f"malformed HTTP answer ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return f"connection failed ({exc.strerror or type(exc).__name__})"
    return type(exc).__name__
