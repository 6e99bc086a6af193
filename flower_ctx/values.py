"""Pure parsers for CONTEXT value formats. Each returns a typed value or raises ``Invalid``.

Messages say what is wrong and what is expected; the caller prefixes the variable name.
Nothing here imports heavy modules (PEM checks live in ``pem`` and run only when a PEM is set).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from .model import HostPort, IPInterface, IPNetwork, SanEntry


class Invalid(ValueError):
    """A value does not parse; ``str()`` is the operator-facing message."""


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_INT = re.compile(r"[0-9]+\Z")


def show(value: str, limit: int = 40) -> str:
    """A value quoted for an error message, cut and with control characters visible."""
    v = value if len(value) <= limit else value[:limit] + "..."
    return repr(v)


def boolean(value: str) -> bool:
    up = value.upper()
    if up == "YES":
        return True
    if up == "NO":
        return False
    raise Invalid(f"must be YES or NO, got {show(value)}")


def integer(value: str, lo: int, hi: int) -> int:
    if not _INT.match(value) or len(value) > 12:  # also keeps int() away from huge digit strings
        raise Invalid(f"must be a whole number from {lo} to {hi}, got {show(value)}")
    n = int(value)
    if not lo <= n <= hi:
        raise Invalid(f"must be from {lo} to {hi}, got {n}")
    return n


def choice(value: str, choices: tuple[str, ...]) -> str:
    for c in choices:
        if value.lower() == c.lower():
            return c
    raise Invalid(f"must be one of {', '.join(choices)}, got {show(value)}")


def text64(value: str) -> bytes:
    """Base64 with whitespace ignored (OpenNebula's text64 user inputs); must decode strictly."""
    compact = "".join(value.split())
    if not compact:
        raise Invalid("is empty after removing whitespace; expected base64")
    if compact.startswith("-----BEGIN"):
        raise Invalid("looks like a raw PEM; text64 values must be its base64 (e.g. `base64 -w0 FILE`)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("is not valid base64") from None


def dns_name(value: str, allow_wildcard: bool = False) -> str:
    name = value.lower().rstrip(".")
    if not name or len(name) > 253:
        raise Invalid(f"{show(value)} is not a valid DNS name")
    labels = name.split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if not all(_DNS_LABEL.match(label) for label in labels):
        raise Invalid(f"{show(value)} is not a valid DNS name (letters, digits, '-' and '.')")
    if re.fullmatch(r"[0-9.]+", name):
        raise Invalid(f"{show(value)} looks like an IPv4 address but is not a valid one")
    return name


def host_port(value: str) -> HostPort:
    """``host:port`` or ``[v6]:port``; host an IP address or a DNS name."""
    form = "expected host:port, e.g. 10.10.9.0:9092, superlink.example.org:9092 or [2001:db8::1]:9092"
    m = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)", value)
    if m:
        host, port_s = m.group(1), m.group(2)
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{show(value)}: {show(host)} is not an IPv6 address; {form}") from None
        host = str(ip)
    else:
        if value.count(":") != 1:
            hint = " (put an IPv6 address in brackets)" if value.count(":") > 1 else ""
            raise Invalid(f"{show(value)}: {form}{hint}")
        host, port_s = value.split(":")
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            try:
                host = dns_name(host)
            except Invalid:
                raise Invalid(
                    f"{show(value)}: {show(host)} is neither an IPv4 address nor a DNS name; {form}"
                ) from None
    if not _INT.match(port_s) or len(port_s) > 5 or not 1 <= int(port_s) <= 65535:
        raise Invalid(f"{show(value)}: port must be from 1 to 65535")
    return HostPort(host, int(port_s))


def san_list(value: str) -> tuple[SanEntry, ...]:
    """``IP:a.b.c.d``, ``IP:v6``, ``DNS:name`` separated by commas (blanks around entries allowed)."""
    out: list[SanEntry] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise Invalid("has an empty entry; separate entries with single commas")
        kind, sep, rest = entry.partition(":")
        kind = kind.upper()
        if not sep or kind not in ("IP", "DNS"):
            raise Invalid(f"entry {show(entry)} must start with IP: or DNS: (e.g. IP:203.0.113.50,DNS:fl.example.org)")
        if kind == "IP":
            try:
                out.append(SanEntry("IP", str(ipaddress.ip_address(rest))))
            except ValueError:
                raise Invalid(f"entry {show(entry)}: {show(rest)} is not an IP address") from None
        else:
            out.append(SanEntry("DNS", dns_name(rest, allow_wildcard=True)))
    seen: list[SanEntry] = []
    for e in out:
        if e not in seen:
            seen.append(e)
    return tuple(seen)


def interface_cidr(value: str) -> IPInterface:
    """An address with prefix, e.g. ``10.10.9.0/31`` (the host's own address, not a network)."""
    if "/" not in value:
        raise Invalid(f"{show(value)} needs a prefix length, e.g. 10.10.9.1/24")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise Invalid(f"{show(value)} is not an address with prefix (e.g. 10.10.9.1/24 or fd00:9::1/64)") from None


def network_cidr(value: str) -> IPNetwork:
    """A network for AllowedIPs; host bits must be zero (``10.10.9.0/24``, ``10.10.9.1/32``)."""
    v = value.strip()
    if "/" not in v:
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise Invalid(f"{show(value)} is not an IP network (e.g. 10.10.9.0/24)") from None
        return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(v, strict=False)
            raise Invalid(f"{show(value)} has host bits set; did you mean {net}?") from None
        raise Invalid(f"{show(value)} is not an IP network (e.g. 10.10.9.0/24)") from None


def wg_key(value: str) -> str:
    """A WireGuard key: base64 of exactly 32 bytes (44 characters ending in '=')."""
    v = value.strip()
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("is not valid base64 (a WireGuard key looks like `wg genkey` output)") from None
    if len(raw) != 32:
        raise Invalid(f"must decode to 32 bytes, got {len(raw)} (a WireGuard key is 44 base64 characters)")
    return base64.b64encode(raw).decode("ascii")


def flower_version(value: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"([0-9]+)\.([0-9]+)\.([0-9]+)", value)
    if not m:
        raise Invalid(f"must be a release X.Y.Z such as 1.39.0, got {show(value)}")
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if v >= (1, 40, 0):
        raise Invalid(
            f"{value} is not supported: Flower 1.40 and later serve the Fleet, Control and Runtime APIs on "
            "one HTTP port, which would expose the Control API (it runs submitted code) to every SuperNode "
            "network; use 1.39.0 or earlier"
        )
    if v < (1, 0, 0):
        raise Invalid(f"{value} is older than any supported Flower release; use 1.39.0")
    return v


_NODE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_NODE_VALUE = re.compile(r"""(?:[A-Za-z0-9_.:/+@%-]+|"[^"\\\n\r\t]*")\Z""")


def node_config(value: str) -> tuple[tuple[str, str], ...]:
    """``key=value`` pairs separated by spaces; values plain words or double-quoted strings."""
    pairs: list[tuple[str, str]] = []
    for item in value.split(" "):
        if not item:
            continue
        key, sep, val = item.partition("=")
        if not sep or not _NODE_KEY.match(key):
            raise Invalid(
                f"{show(item)} is not key=value (keys: letters, digits, _ . -), e.g. partition-id=0 num-partitions=2"
            )
        if not _NODE_VALUE.match(val):
            raise Invalid(
                f"{key}: value {show(val)} has characters not allowed (use a plain word or a \"quoted string\" "
                "without quotes, backslashes or control characters inside)"
            )
        if any(k == key for k, _ in pairs):
            raise Invalid(f"{key} is given twice")
        pairs.append((key, val))
    if any(c in value for c in "\n\r\t"):
        raise Invalid("must be on one line, pairs separated by spaces")
    return tuple(pairs)


def relative_path(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._/-]+", value):
        raise Invalid(f"{show(value)} may contain only letters, digits and . _ / -")
    if value.startswith("/"):
        raise Invalid(f"{show(value)} must be relative to /opt/flower (e.g. state/state.db)")
    parts = value.split("/")
    if ".." in parts:
        raise Invalid(f"{show(value)} must not contain '..'")
    if any(p in ("", ".") for p in parts) or value.endswith("/"):
        raise Invalid(f"{show(value)} must be a file path like state/state.db (no empty or '.' parts)")
    if len(parts) < 2 or parts[0] != "state":
        # Only state/ is writable by the sandboxed SuperLink unit, and only it may be made 0700 flower.
        raise Invalid(f"{show(value)} must be inside state/ (e.g. state/{parts[-1]})")
    return value
