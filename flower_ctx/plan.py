"""What a configure step did or would do: the vocabulary shared by every step and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Change:
    """One thing a step manages. ``outcome`` is created/updated/unchanged/removed/skipped, or
    with --dry-run would-create/would-update/would-remove."""

    what: str  # e.g. "/opt/flower/certs/server.pem" or "wg0 peer abc...= allowed-ips"
    outcome: str
    detail: str = ""  # short, never secret

    @property
    def pending(self) -> bool:
        return self.outcome not in ("unchanged", "skipped")


@dataclass
class StepResult:
    name: str  # "tls", "wireguard", "runtime", ...
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # System effects not performed because of --root (listed so the operator sees them).
    skipped: list[str] = field(default_factory=list)
    # Values worth showing/publishing (never secrets): e.g. {"ca_fingerprint": "sha256:..."}.
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(c.pending for c in self.changes)
