"""The Flower releases named in the code, the packaging and the appliance agree (issue 17)."""

from __future__ import annotations

import configparser
import re

from flower_ctx.runtime import eras
from flower_ctx.values import FLOWER_BAKED, FLOWER_FIRST, FLOWER_LAST
from flower_ctx.variables import BY_NAME
from tests.conftest import REPO


def test_the_image_bakes_the_flower_extra_and_flower139_is_the_other_era() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = {k: v.split() for k, v in cfg["options.extras_require"].items()}
    assert extras["flower"] == [f"flwr=={FLOWER_BAKED}"]
    assert extras["flower139"] == ["flwr==1.39.0"]
    assert BY_NAME["FLOWER_VERSION"].default == FLOWER_BAKED
    assert eras.for_version(FLOWER_BAKED) is eras.HTTP and eras.for_version("1.39.0") is eras.GRPC
    assert (eras.ERAS[0].first, eras.ERAS[-1].last) == (FLOWER_FIRST, FLOWER_LAST)


def test_test_sh_makes_both_virtualenvs_and_the_appliance_names_its_flower() -> None:
    script = (REPO / "test.sh").read_text()
    assert "'.[test,flower139]'" in script and ".venv-flwr142" in script and "'.[flower]'" in script
    appliance = (REPO / "docs" / "appliance.md").read_text()
    assert re.search(rf"Flower {re.escape(FLOWER_BAKED)}", appliance)
