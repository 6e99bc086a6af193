"""The parts of Flower's command line that every era shares (flags read in each era's wheel)."""

from __future__ import annotations

from typing import Any

from ..errors import FlowerCtxError


class NoSuperLinkYet(FlowerCtxError):
    """A SuperNode's runtime configuration has no SuperLink address (OneGate discovery pending)."""


def tls_args(doc: dict[str, Any], role: str) -> list[str]:
    tls = doc.get("tls") or {}
    if not tls.get("enabled"):
        return ["--insecure"]
    if role == "superlink":
        return ["--ssl-ca-certfile", tls["ca_certfile"], "--ssl-certfile", tls["certfile"],
                "--ssl-keyfile", tls["keyfile"]]
    return ["--root-certificates", tls["ca_certfile"]]


def supernode_args(doc: dict[str, Any]) -> list[str]:
    """``--superlink`` and the SuperNode's own options (the transport flag is the era's)."""
    if not doc.get("superlink_address"):
        raise NoSuperLinkYet("no SuperLink address yet: set FL_SUPERLINK_ADDRESS, or wait until OneGate "
                             "discovery finds the SuperLink of this service and configure writes it")
    out = ["--superlink", doc["superlink_address"]]
    if doc.get("node_key"):
        out += ["--auth-supernode-private-key", doc["node_key"]]
    if doc.get("node_config"):
        out += ["--node-config", doc["node_config"]]
    if doc.get("max_retries"):
        out += ["--max-retries", str(doc["max_retries"])]
    if doc.get("max_wait_time"):
        out += ["--max-wait-time", str(doc["max_wait_time"])]
    if doc.get("runtime_dependency_install") is True:  # a SuperNode installs nothing unless asked
        out += ["--allow-runtime-dependency-installation"]
    return out


def trust_agent(doc: dict[str, Any]) -> str | None:
    """A SuperNode with TLS: the user agent announcing the CAs it trusts (``trust``); else None."""
    tls = doc.get("tls") or {}
    if doc["role"] != "supernode" or not tls.get("enabled") or not tls.get("ca_certfile"):
        return None
    from .. import trust

    return trust.agent_for(tls["ca_certfile"]) or None


def trust_report_path(doc: dict[str, Any]) -> Any:
    """A SuperLink with TLS: where it records what its SuperNodes trust (``trust``); else None."""
    tls = doc.get("tls") or {}
    if doc["role"] != "superlink" or not tls.get("enabled") or not doc.get("state_dir"):
        return None
    from pathlib import Path

    from .. import trust

    return Path(doc["state_dir"]) / trust.REPORT


def common_tail(doc: dict[str, Any]) -> list[str]:
    """Flower's own HTTP API (loopback) and the optional gRPC health server."""
    http = doc.get("http_api") or {}
    out = ["--host", str(http.get("host", "127.0.0.1"))]
    if http.get("port") is not None:
        out += ["--port", str(http["port"])]
    if doc.get("health_server_address"):
        out += ["--health-server-address", doc["health_server_address"]]
    return out


def split_host_port(address: str) -> tuple[str, int]:
    """"0.0.0.0:9092" -> ("0.0.0.0", 9092); "[::]:9092" -> ("::", 9092)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
