"""How Flower runs on this VM: the runtime configuration configure writes (``config``) and the code
that applies keepalive to Flower's own sockets (``grpc_patch`` + ``grpc_keepalive``).

The names of ``config`` are re-exported: ``from flower_ctx.runtime import read`` keeps working.
"""

from __future__ import annotations

from .config import (
    FLEET_API_ADDRESS,
    FLOWER_USER,
    LOOPBACK,
    SCHEMA,
    SUPERLINK_HTTP_PORT,
    SUPERNODE_HTTP_PORT,
    RuntimeConfigError,
    apply,
    build_runtime_config,
    database_path,
    node_config_ok,
    problems,
    read,
    render,
)

__all__ = [
    "FLEET_API_ADDRESS", "FLOWER_USER", "LOOPBACK", "SCHEMA", "SUPERLINK_HTTP_PORT", "SUPERNODE_HTTP_PORT",
    "RuntimeConfigError", "apply", "build_runtime_config", "database_path", "node_config_ok", "problems", "read",
    "render",
]
