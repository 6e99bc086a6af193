"""Every path flower-ctx reads or writes, re-rootable for ``--root DIR`` staging trees and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ONE_CONTEXT_DIR = Path("/var/run/one-context")


@dataclass(frozen=True)
class Paths:
    """Paths of one machine. ``root`` is ``/`` on a VM, a staging directory with ``--root``."""

    root: Path = Path("/")

    def _p(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    @property
    def staged(self) -> bool:
        """True when writing into a staging tree: system effects (systemctl, links, OneGate) are skipped."""
        return self.root != Path("/")

    # Flower tree (DESIGN section 5)
    @property
    def flower_home(self) -> Path:
        return self._p("/opt/flower")

    @property
    def certs_dir(self) -> Path:
        return self._p("/opt/flower/certs")

    @property
    def ca_cert(self) -> Path:
        return self.certs_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.certs_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.certs_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.certs_dir / "server.key"

    @property
    def node_key(self) -> Path:
        """A SuperNode's identity key (OpenSSH EC private key, read by Flower as ``flower``)."""
        return self.certs_dir / "node.key"

    @property
    def state_dir(self) -> Path:
        return self._p("/opt/flower/state")

    @property
    def config_dir(self) -> Path:
        return self._p("/opt/flower/config")

    def runtime_config(self, role: str) -> Path:
        return self.config_dir / f"{role}.json"

    @property
    def venv_bin(self) -> Path:
        return self._p("/opt/flower/venv/bin")

    # WireGuard
    @property
    def wg_dir(self) -> Path:
        return self._p("/etc/wireguard")

    @property
    def wg_key(self) -> Path:
        return self.wg_dir / "wg0.key"

    @property
    def wg_conf(self) -> Path:
        return self.wg_dir / "wg0.conf"

    @property
    def wg_run_dir(self) -> Path:
        return self._p("/run/wireguard")

    # Agent state and one-context runtime files
    @property
    def agent_dir(self) -> Path:
        return self._p("/etc/flower-ctx")

    @property
    def one_context_dir(self) -> Path:
        return self._p(str(ONE_CONTEXT_DIR))

    @property
    def one_env(self) -> Path:
        return self.one_context_dir / "one_env"
