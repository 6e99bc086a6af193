"""A SuperNode whose Flower gave up on its SuperLink after a TLS handshake failure exits, so its
supervisor starts it again (runtime/giveup.py). Found by the lab's restore drill: a SuperNode that
met the rebuilt SuperLink's new CA stayed alive, idle and never retried once the old CA was back."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from flower_ctx.runtime import giveup
from tests.conftest import requires_flower
from tests.runtime_helpers import Proc, flower_ctx_argv, free_port, make_pki, stage_runtime_config


def test_flowers_own_give_up_line_ends_the_process_once_after_a_grace() -> None:
    from flwr.common.logger import log  # Flower's own logging call: its logger name and message format

    fired = threading.Event()
    calls: list[float] = []
    watch = giveup.GiveUpWatch(lambda: (calls.append(time.monotonic()), fired.set()), grace=0.2)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(watch)
    try:
        log(logging.WARNING, "Connection attempt failed, retrying in %.2f seconds", 1.5)
        log(logging.ERROR, "SSL/TLS handshake failed? no: %s", "another line")
        time.sleep(0.3)
        assert calls == []
        t0 = time.monotonic()
        log(logging.ERROR, giveup.GAVE_UP)
        log(logging.ERROR, giveup.GAVE_UP)  # Flower logs it once per giving-up call: one exit only
        assert fired.wait(5)
        time.sleep(0.3)
        assert len(calls) == 1 and calls[0] - t0 >= 0.2
    finally:
        flwr_logger.removeHandler(watch)


@requires_flower
@pytest.mark.flower
@pytest.mark.slow
def test_a_supernode_that_gave_up_on_tls_exits_for_its_supervisor(tmp_path: Path, procs: list[Proc]) -> None:
    """Real Flower 1.39 SuperNodes connected to a SuperLink that is then replaced by one whose
    certificate their CA does not verify (a SuperLink VM rebuilt with a new CA): Flower gives up on
    the handshake. Stock Flower stays alive without a connection (reproduced); under flower-ctx the
    process ends with EXIT_GAVE_UP for its supervisor to start it again."""
    from flower_ctx.commands.run import flower_argv, load_runtime_config, prepare_environment
    from flower_ctx.paths import Paths
    from tests.flower_envs import bin_dir, flower_python

    served, other = make_pki(tmp_path / "served"), make_pki(tmp_path / "other")
    fleet = free_port()

    def superlink(name: str, pki: object) -> Proc:
        root = tmp_path / name
        stage_runtime_config(root, "superlink", pki, fleet_api_address=f"127.0.0.1:{fleet}",
                             http_api={"port": free_port()})
        proc = Proc(flower_ctx_argv("run", "superlink", "--root", str(root))).start()
        procs.append(proc)
        proc.wait_for("Starting Fleet API", 60)
        return proc

    link = superlink("L", served)
    node_root = tmp_path / "N"
    stage_runtime_config(node_root, "supernode", served, superlink_address=f"127.0.0.1:{fleet}",
                         http_api={"port": free_port()}, node_key=None)
    node = Proc(flower_ctx_argv("run", "supernode", "--root", str(node_root))).start()
    procs.append(node)
    doc = load_runtime_config(Paths(node_root), "supernode")
    doc["http_api"] = {"host": "127.0.0.1", "port": free_port()}
    stock = Proc([str(bin_dir(flower_python("1.39")) / "flower-supernode"), *flower_argv(doc)[1:]],
                 env=prepare_environment(doc)).start()
    procs.append(stock)
    for p in (node, stock):
        p.wait_for("Starting Flower SuperNode", 60)
    time.sleep(3)  # both connected and pulling
    link.kill()
    superlink("L2", other)  # the same address, another CA
    for p in (node, stock):
        p.wait_for(giveup.GAVE_UP, 120)
    gave_up = time.monotonic()
    assert node.popen.wait(30) == giveup.EXIT_GAVE_UP, node.text()[-3000:]
    took = time.monotonic() - gave_up
    assert "exiting so that its supervisor starts it again" in node.text()
    time.sleep(max(0.0, 15 - (time.monotonic() - gave_up)))
    assert stock.popen.poll() is None  # stock Flower: alive 15 s after giving up, never to retry
    print(f"\nFlower gave up on TLS; flower-ctx ended the SuperNode {took:.1f} s later (exit "
          f"{giveup.EXIT_GAVE_UP}); stock Flower still idle after 15 s")
