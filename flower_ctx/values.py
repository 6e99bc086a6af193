"""Pure parsers for CONTEXT value formats. Each returns a typed value or raises ``Invalid``.

Messages say what is wrong and what is expected; the caller prefixes the variable name.
Nothing here imports heavy modules (PEM checks live in ``pem`` and run only when a PEM is set).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable

from .model import HostPort, IPAddress, IPInterface, IPNetwork, SanEntry


class Invalid(ValueError):
    """A value does not parse; ``str()`` is the operator-facing message."""


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_INT = re.compile(r"[0-9]+\Z")


# A run of base64 letters long and mixed enough to be (part of) a key or token: never echoed. Runs are
# cut at "=", ".", "-", "_" and ":" so paths, names and addresses stay readable in messages.
_KEYLIKE = re.compile(r"[A-Za-z0-9+/]{8,}")
MAX_VALUE_LEN = 65536  # longest CONTEXT value any variable takes (a PEM chain fits many times over)
MAX_LIST = 256  # entries in one list value (node config pairs, SANs, peers): keeps every check linear


def _secret_looking(run: str) -> bool:
    """Random base64 mixes cases and digits throughout; words (even Capitalised ones) do not."""
    upper = sum(c.isupper() for c in run)
    lower = any(c.islower() for c in run)
    digit = any(c.isdigit() for c in run)
    return "+" in run or (digit and (upper or lower)) or (upper >= 2 and lower)


def redact(text: str) -> str:
    """``text`` with every run that could be key material replaced by ``<N characters hidden>``.
    Certificate fingerprints (``sha256:`` + hex) stay: they are public and name what mismatched."""

    def hide(m: re.Match[str]) -> str:
        run = m.group(0)
        if text[max(0, m.start() - 7) : m.start()].lower() == "sha256:" and re.fullmatch(r"[0-9a-fA-F]+", run):
            return run
        return f"<{len(run)} characters hidden>" if _secret_looking(run) else run

    return _KEYLIKE.sub(hide, text)


def show(value: str, limit: int = 40) -> str:
    """A value quoted for an error message: cut, control characters visible, and nothing that could
    be (part of) a key: an operator who pasted a key into the wrong variable must not see it echoed."""
    v = redact(value)
    v = v if len(v) <= limit else v[:limit] + "..."
    return repr(v)


def ascii_text(value: str, what: str = "") -> str:
    """``value`` when it is printable ASCII; lookalike letters and digits from other scripts
    (``ſ``, ``K``, ``１``) are refused instead of being folded into ASCII by ``upper()``/``int()``."""
    for c in value:
        if not c.isascii():
            raise Invalid(f"{what or 'the value'} contains {c!r} (U+{ord(c):04X}); only plain ASCII is accepted here")
        if not c.isprintable():
            raise Invalid(f"{what or 'the value'} contains the control character {c!r}; write it on one line")
    return value


def ip_address(value: str) -> IPAddress:
    """An IPv4 or IPv6 address in plain ASCII, without an IPv6 zone (``%eth0``): a zone cannot be put
    in a certificate or routed, and it means something else on every machine."""
    ascii_text(value, "the address")
    if "%" in value:
        raise Invalid(f"{show(value)}: IPv6 zone ids (%...) are not supported; use a global or unique-local address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"{show(value)} is not an IP address") from None


def boolean(value: str) -> bool:
    up = value.upper() if value.isascii() else value
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
        if value.isascii() and value.lower() == c.lower():
            return c
    raise Invalid(f"must be one of {', '.join(choices)}, got {show(value)}")


def text64(value: str) -> bytes:
    """Base64 with whitespace ignored (OpenNebula's text64 user inputs); must decode strictly."""
    compact = "".join(value.split())
    if not compact:
        raise Invalid("is empty after removing whitespace; expected base64")
    if not compact.isascii():
        raise Invalid("is not valid base64 (it contains non-ASCII characters)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("is not valid base64") from None


def text64_content(value: str, looks_right: Callable[[bytes], bool], what: str) -> bytes:
    """The content of a ``text64`` input however the client delivered it.

    The web UI passes what was typed through unchanged (raw text, or the base64 the operator
    pasted); the ``oneflow-template instantiate`` CLI base64-encodes what was typed, so a value
    pasted already encoded arrives encoded twice. Accepted: raw, base64 of it, base64 of that.
    Raw multi-line text may come back from OneFlow 7 with a ',' added before each newline (its
    template rewrite): those commas are taken off again.
    """
    raw = value.strip()
    if looks_right(raw.encode("utf-8", "replace")):
        return re.sub(r",[ \t]*(\r?\n)", r"\1", raw.rstrip(",")).encode("utf-8")
    once = text64(value)
    if looks_right(once):
        return once
    try:
        twice = text64(once.decode("ascii"))
    except (UnicodeDecodeError, Invalid):
        twice = b""
    if twice and looks_right(twice):
        return twice
    raise Invalid(f"decodes, but not to {what}; give the text itself or its base64 (e.g. `base64 -w0 FILE`)")


def dns_name(value: str, allow_wildcard: bool = False) -> str:
    if not value.isascii():
        raise Invalid(f"{show(value)} is not a valid DNS name (letters, digits, '-' and '.' in ASCII)")
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
    if len(value) > 300 or not value.isascii() or not value.isprintable():
        raise Invalid(f"{show(value)}: {form}")
    m = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)", value)
    if m:
        host, port_s = m.group(1), m.group(2)
        try:
            ip = ip_address(host)
        except Invalid as exc:
            raise Invalid(f"{exc}; {form}") from None
        if ip.version != 6:
            raise Invalid(f"{show(value)}: brackets are for IPv6 addresses only; {form}")
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
    ascii_text(value)
    if value.count(",") >= MAX_LIST:
        raise Invalid(f"has more than {MAX_LIST} entries")
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
                out.append(SanEntry("IP", str(ip_address(rest))))
            except Invalid as exc:
                raise Invalid(f"entry {show(entry)}: {exc}") from None
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
    address, _, prefix = value.partition("/")
    ip_address(address)  # ASCII, no zone id
    if not re.fullmatch(r"[0-9]{1,3}", prefix):
        raise Invalid(f"{show(value)}: the prefix length must be a number such as 24")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise Invalid(f"{show(value)} is not an address with prefix (e.g. 10.10.9.1/24 or fd00:9::1/64)") from None


def network_cidr(value: str) -> IPNetwork:
    """A network for AllowedIPs; host bits must be zero (``10.10.9.0/24``, ``10.10.9.1/32``)."""
    v = value.strip()
    if "/" not in v:
        try:
            ip = ip_address(v)
        except Invalid:
            raise Invalid(f"{show(value)} is not an IP network (e.g. 10.10.9.0/24)") from None
        return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
    address, _, prefix = v.partition("/")
    try:
        ip_address(address)
    except Invalid as exc:
        raise Invalid(f"{exc} (in network {show(value)})") from None
    if not re.fullmatch(r"[0-9]{1,3}", prefix):
        raise Invalid(f"{show(value)}: the prefix length must be a number such as 24")
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(v, strict=False)
            raise Invalid(f"{show(value)} has host bits set; did you mean {net}?") from None
        raise Invalid(f"{show(value)} is not an IP network (e.g. 10.10.9.0/24)") from None


def network_list(value: str) -> tuple[IPNetwork, ...]:
    """Networks separated by commas (AllowedIPs), at most MAX_LIST."""
    if value.count(",") >= MAX_LIST:
        raise Invalid(f"has more than {MAX_LIST} entries")
    if any(len(x.split()) > 1 for x in value.split(",")):
        raise Invalid("separate the networks with commas, not spaces (e.g. 10.10.9.0/24,198.18.3.0/24)")
    return tuple(network_cidr(x) for x in value.split(","))


def wg_key(value: str) -> str:
    """A WireGuard key: base64 of exactly 32 bytes (44 characters ending in '=')."""
    v = value.strip()
    if not v.isascii():
        raise Invalid("is not valid base64 (a WireGuard key looks like `wg genkey` output)")
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("is not valid base64 (a WireGuard key looks like `wg genkey` output)") from None
    if len(raw) != 32:
        raise Invalid(f"must decode to 32 bytes, got {len(raw)} (a WireGuard key is 44 base64 characters)")
    return base64.b64encode(raw).decode("ascii")


# The Flower releases flower-ctx runs (docs/flower-eras.md): 1.39 (gRPC Fleet API) and 1.40 to 1.42
# (HTTP Fleet API beside Control and Runtime, kept apart by flower-ctx). Inclusive major.minor bounds.
FLOWER_FIRST = (1, 39)
FLOWER_LAST = (1, 42)
# What the appliance image bakes (the `flower` extra of setup.cfg pins the same release).
FLOWER_BAKED = "1.42.0"


def flower_range_text() -> str:
    return f"{FLOWER_FIRST[0]}.{FLOWER_FIRST[1]}.0 to {FLOWER_LAST[0]}.{FLOWER_LAST[1]}.x"


def flower_version(value: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"([0-9]{1,6})\.([0-9]{1,6})\.([0-9]{1,6})", value)
    if not m:
        raise Invalid(f"must be a release X.Y.Z such as {FLOWER_BAKED}, got {show(value)}")
    v = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if not FLOWER_FIRST <= v[:2] <= FLOWER_LAST:
        newer = v[:2] > FLOWER_LAST
        raise Invalid(
            f"{value} is not supported: flower-ctx runs Flower {flower_range_text()} "
            + ("(a newer release is not known to keep the Control API off the SuperNode networks "
               "and the keepalive bound)" if newer else "(older releases are not tested with this flower-ctx)")
            + f"; use {FLOWER_BAKED} (the image's) or 1.39.0"
        )
    return v


MAX_APP_REQUIREMENTS = 32
# Packages an app must not pin: they are the agent, Flower and the installers themselves.
PROTECTED_PACKAGES = frozenset({"flwr", "flwr-nightly", "flower-ctx", "pip", "uv", "setuptools", "wheel"})
_REQ_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")
# PEP 440 public versions without epochs, wildcards or local parts: one exact release per package.
_REQ_VERSION = re.compile(
    r"[0-9]{1,8}(?:\.[0-9]{1,8}){0,5}(?:(?:a|b|rc)[0-9]{1,6})?(?:\.post[0-9]{1,6})?(?:\.dev[0-9]{1,6})?"
)


def canonical_package(name: str) -> str:
    """PEP 503 normalised name: how pip and the index compare names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def app_requirements(value: str) -> tuple[tuple[str, str], ...]:
    """Exact pins ``name==version`` separated by commas or spaces (FL_APP_DEPENDENCIES).

    Only exact pins: no ranges, URLs, paths, extras, markers or pip options, so what CONTEXT asks for
    names one release of one package and nothing can reach pip's command line as an option."""
    entries = [e for e in re.split(r"[\s,]+", value.strip()) if e]
    if not entries:
        raise Invalid("is empty; give pins such as numpy==1.26.4,pandas==2.2.2 or leave it unset")
    if len(entries) > MAX_APP_REQUIREMENTS:
        raise Invalid(f"has {len(entries)} entries; at most {MAX_APP_REQUIREMENTS} packages can be pinned")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in entries:
        name, sep, version = entry.partition("==")
        if not sep or not _REQ_NAME.fullmatch(name) or not _REQ_VERSION.fullmatch(version):
            raise Invalid(f"entry {show(entry)} must be an exact pin name==version such as numpy==1.26.4 "
                          "(no ranges, extras, URLs or options)")
        key = canonical_package(name)
        if key in PROTECTED_PACKAGES:
            raise Invalid(f"entry {show(entry)}: {name} is part of the appliance itself; FLOWER_VERSION "
                          "chooses Flower, and the installers are not app dependencies")
        if key in seen:
            raise Invalid(f"names {name} twice; pin each package once")
        seen.add(key)
        out.append((key, version))
    return tuple(out)


# Flower 1.39's own reading of --node-config (flwr/common/config.py, parse_config_args): every
# ``key=value`` match of this pattern becomes a ``key = value`` TOML line, parsed with tomli. Values
# are therefore TOML: numbers, true/false, "double" or 'single' quoted strings (with spaces).
_FLOWER_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def node_config(value: str) -> tuple[tuple[str, str], ...]:
    """``key=value`` pairs as Flower reads them: a value is a TOML literal (``0``, ``0.5``, ``true``,
    ``"a string with spaces"``, ``'literal'``). What Flower would refuse is refused here, with its
    reason; text Flower would silently drop (no ``key=``) is refused too, it never reaches Flower."""
    if len(value) > 8192:
        raise Invalid("is longer than 8192 characters")
    if value.rstrip().endswith(".toml"):
        raise Invalid(
            "ends in '.toml', which Flower takes as the name of a TOML file to read on the VM; "
            'quote the value (key="name.toml")'
        )
    pairs: list[tuple[str, str]] = []
    rest = []
    last = 0
    for m in _FLOWER_PAIR.finditer(value):
        rest.append(value[last : m.start()])
        last = m.end()
        pairs.append((m.group(1), m.group(2)))
    rest.append(value[last:])
    leftover = " ".join("".join(rest).split())
    if leftover:
        raise Invalid(
            f"{show(leftover)} is not key=value; Flower would ignore it (pairs are separated by spaces, "
            "e.g. partition-id=0 num-partitions=2 name=\"site b\")"
        )
    if len(pairs) > MAX_LIST:
        raise Invalid(f"has more than {MAX_LIST} pairs")
    try:
        doc = _toml_loads("\n".join(f"{k} = {v}" for k, v in pairs))
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise Invalid(
            f"Flower cannot read it as key=value pairs ({exc}): values must be numbers, true/false "
            'or quoted strings, e.g. partition-id=0 lr=0.1 name="site b"'
        ) from None
    bad = _untyped(doc)
    if bad:
        # Flower's flatten_dict takes only int, float, bool, str and tables of them (arrays, dates refused).
        raise Invalid(f"{bad}: Flower takes only numbers, true/false and quoted strings as values (no arrays or "
                      "dates)")
    return tuple(pairs)


def _untyped(doc: dict, prefix: str = "") -> str | None:
    """The first key whose value Flower's node config cannot hold, or None."""
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found = _untyped(value, name + ".")
            if found:
                return found
        elif not isinstance(value, (bool, int, float, str)):
            return name
    return None


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
        raise Invalid(f"{show(value)} must be inside state/ (e.g. state/" + show(parts[-1]).strip("'") + ")")
    return value


def onegate_url_ok(url: str) -> bool:
    """``http(s)://host[:port][/path]`` with a host and a port from 1 to 65535, in plain ASCII."""
    from urllib.parse import urlsplit

    if len(url) > 2048 or not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[!-~]*)?", url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range, unbalanced brackets
        return False
    return bool(parts.hostname) and (port is None or 1 <= port <= 65535)
