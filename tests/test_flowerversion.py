"""FLOWER_VERSION: the baked Flower is kept unless another release installs; failures are reported."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from flower_ctx import flowerversion
from flower_ctx.config import load_config
from flower_ctx.paths import Paths
from tests.conftest import requires_flower

pytestmark = requires_flower


def test_same_version_is_unchanged(tmp_path: Path) -> None:
    have = metadata.version("flwr")
    result = flowerversion.apply(load_config("superlink", {"FLOWER_VERSION": have}), Paths(tmp_path))
    assert [c.outcome for c in result.changes] == ["unchanged"] and not result.warnings


def test_other_version_under_root_is_listed_not_installed(tmp_path: Path) -> None:
    cfg = load_config("superlink", {"FLOWER_VERSION": "1.41.0"})
    staged = flowerversion.apply(cfg, Paths(tmp_path / "stage"))
    assert staged.skipped == [f"pip install flwr==1.41.0 (installed: {metadata.version('flwr')})"]
    dry = flowerversion.apply(cfg, Paths(tmp_path / "stage"), dry_run=True)
    assert [c.outcome for c in dry.changes] == ["would-update"]


@pytest.mark.slow
def test_unavailable_release_keeps_the_baked_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # A release that does not exist: pip really runs and fails (or cannot reach the index); nothing changes.
    before = metadata.version("flwr")
    result = flowerversion.apply(load_config("supernode", {"FLOWER_VERSION": "1.39.97"}), Paths(), timeout=120)
    assert metadata.version("flwr") == before
    assert result.changes[0].outcome == "skipped" and f"kept {before}" in result.changes[0].detail
    assert result.warnings and "could not install Flower 1.39.97" in result.warnings[0]
