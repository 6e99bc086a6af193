"""Build validated-looking Config objects directly, for tests of the modules that consume them."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from flower_ctx.model import Config, Nic, OneGateAccess, PkiMaterial, Role, WgConfig


def make_config(role: str | Role = Role.SUPERLINK, **overrides: Any) -> Config:
    base = Config(
        role=Role(role),
        flower_version="1.39.0",
        tls_enabled=True,
        log_level="INFO",
        isolation="subprocess",
        keepalive_time=60,
        keepalive_timeout=20,
        pki=PkiMaterial(),
        cert_extra_san=(),
        database="state/state.db",
        superlink_address=None,
        node_config=(),
        max_retries=0,
        max_wait_time=0,
        wg=None,
        nics=(Nic(0, ipaddress.IPv4Address("192.0.2.10")),),
        onegate=OneGateAccess(None, None, None),
    )
    return dataclasses.replace(base, **overrides)


def make_wg(**overrides: Any) -> WgConfig:
    base = WgConfig(
        address=ipaddress.ip_interface("10.10.9.0/31"),
        private_key=None,
        listen_port=51820,
        mtu=1420,
        peers=(),
        forward=False,
    )
    return dataclasses.replace(base, **overrides)
