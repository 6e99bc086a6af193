"""Flower 1.39: the Fleet API on gRPC at its own public address, gRPC keepalive (DESIGN section 6).

argv: ``--fleet-api-type grpc-rere --fleet-api-address ADDR`` on the SuperLink, ``--grpc-rere`` on
the SuperNode; Control and Runtime stay on Flower's HTTP ``--host/--port`` (loopback). Keepalive:
the grpcio channel and server options of ``grpc_keepalive``, put on every channel and server of the
process by ``grpc_patch``.
"""

from __future__ import annotations

import logging
from typing import Any

from .common import common_tail, supernode_args, tls_args, trust_agent, trust_report_path

log = logging.getLogger("flower_ctx.run")


def argv(doc: dict[str, Any]) -> list[str]:
    role = doc["role"]
    out = ["flower-superlink" if role == "superlink" else "flower-supernode", *tls_args(doc, role),
           "--isolation", doc["isolation"]]
    if role == "superlink":
        out += ["--fleet-api-type", "grpc-rere", "--fleet-api-address", doc["fleet_api_address"],
                "--database", doc["database"]]
        if doc.get("supernode_auth"):
            out += ["--enable-supernode-auth"]
    else:
        out += ["--grpc-rere", *supernode_args(doc)]
    return out + common_tail(doc)


def install(doc: dict[str, Any]) -> str:
    from . import grpc_keepalive as keepalive
    from . import grpc_patch

    ka = doc["keepalive"]
    t, timeout = int(ka["time_s"]), int(ka["timeout_s"])
    client, interceptors = keepalive.client_options(t, timeout), []
    agent, report = trust_agent(doc), trust_report_path(doc)
    if agent:  # which CAs this SuperNode trusts, for a CA rotation on the SuperLink
        client = [*client, ("grpc.primary_user_agent", agent)]
    if report is not None:
        from .. import trust

        interceptors.append(trust.interceptor(report))
    layer = grpc_patch.install(client, keepalive.server_options(t, timeout), server_interceptors=interceptors)
    log.info("gRPC keepalive %ss/%ss installed on the %s layer (self-test passed)", t, timeout, layer)
    return f"gRPC keepalive {t}s/{timeout}s ({layer} layer)"
