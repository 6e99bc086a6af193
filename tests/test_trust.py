"""Discovery that cannot be hijacked, and secrets out of OneGate's reach (issue 13).

The attacks are real requests to the OneGate double, made with another service VM's own token, as
OneGate allows upstream (PUT /vms/<id> inside a service; GET /service?extended=true)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import pytest

from flower_ctx import boot
from flower_ctx.config import load_config
from flower_ctx.context import render
from flower_ctx.discovery import DiscoveryTimeout
from flower_ctx.onegate import OneGateClient
from flower_ctx.paths import Paths
from flower_ctx.pem import fingerprint, load_certs
from tests.conftest import REPO
from tests.onegate_server import OneGateServer, access_for, make_ca_pem

pytestmark = pytest.mark.usefixtures("no_token_in_output")


@pytest.fixture
def gate() -> OneGateServer:
    with OneGateServer() as g:
        yield g


def _publish_ca(gate: OneGateServer, vm, pem: bytes) -> None:
    certs = load_certs(pem)
    vm.user_template.update({"FL_TLS": "YES", "FL_ENDPOINT": "192.0.2.10:9092",
                             "FL_CA_CERT": base64.b64encode(pem).decode(), "FL_CA_FINGERPRINT": fingerprint(certs[0])})


def _rewrite_as(gate: OneGateServer, attacker, target, attrs: dict[str, str]) -> int:
    """What any VM of the service can do upstream: PUT /vms/<id> with its own token."""
    body = urlencode({"data": "\n".join(f"{k}={v}" for k, v in attrs.items()), "type": "1"}).encode()
    req = Request(f"{gate.url}/vms/{target.id}", data=body, method="PUT",
                  headers={"X-ONEGATE-TOKEN": attacker.token, "X-ONEGATE-VMID": str(attacker.id),
                           "Content-Type": "application/x-www-form-urlencoded"})
    with urlopen(req, timeout=5) as resp:
        return resp.status


def _service(gate: OneGateServer):
    link = gate.add_vm("superlink_0_(service_21)")
    node = gate.add_vm("supernode_0_(service_21)")
    rogue = gate.add_vm("supernode_1_(service_21)")
    gate.add_service("flower", {"superlink": [link], "supernode": [node, rogue]}, service_id=21)
    return link, node, rogue


def test_first_ca_is_pinned_and_a_rewritten_one_is_refused(gate: OneGateServer, tmp_path: Path) -> None:
    link, node, rogue = _service(gate)
    genuine = make_ca_pem("genuine SuperLink CA")
    _publish_ca(gate, link, genuine)
    paths = Paths(tmp_path / "node")
    cfg = load_config("supernode", {"FL_TLS_ENABLED": "YES"})
    said: list[str] = []
    client = OneGateClient(access_for(gate, node))
    boot.discover(cfg, paths, client, 5, said.append)
    pin = boot.pinned_ca(paths)
    installed = paths.ca_cert.read_bytes()
    assert pin and pin["fingerprint"] == fingerprint(load_certs(genuine)[0]) == fingerprint(load_certs(installed)[0])
    assert len(load_certs(installed)) == 1  # what is installed is exactly what the fingerprint names

    # The attack: another VM of the same service rewrites the SuperLink's attributes.
    evil = make_ca_pem("attacker CA")
    evil_fp = fingerprint(load_certs(evil)[0])
    status = _rewrite_as(gate, rogue, link, {"FL_CA_CERT": base64.b64encode(evil).decode(),
                                             "FL_CA_FINGERPRINT": evil_fp, "FL_ENDPOINT": "192.0.2.66:9092"})
    assert status == 200 and gate.user_template(link)["FL_CA_FINGERPRINT"] == evil_fp  # the attack is real
    with pytest.raises(boot.CaPinError) as info:
        boot.discover(cfg, paths, client, 5, said.append)
    message = str(info.value)
    assert pin["fingerprint"] in message and evil_fp in message and "ca forget" in message
    assert paths.ca_cert.read_bytes() == installed  # nothing replaced
    assert boot.pinned_ca(paths)["refused"]["fingerprint"] == evil_fp  # status and doctor show it

    # The operator's way out, after comparing fingerprints on the SuperLink.
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "ca", "forget", "--root", str(paths.root)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "forgot the pinned CA" in out.stdout
    boot.discover(cfg, paths, client, 5, said.append)
    assert boot.pinned_ca(paths)["fingerprint"] == evil_fp  # trust on first use again, by the operator's choice


def test_exactly_one_ca_at_first_contact_and_a_rotation_bundle_only_through_the_pin(gate: OneGateServer,
                                                                                   tmp_path: Path) -> None:
    link, node, _ = _service(gate)
    one, two, nxt, evil = (make_ca_pem(n) for n in ("one", "two", "next", "evil"))
    fp = lambda pem: fingerprint(load_certs(pem)[0])  # noqa: E731

    def publish(bundle: bytes) -> None:
        link.user_template.update({"FL_TLS": "YES", "FL_ENDPOINT": "192.0.2.10:9092",
                                   "FL_CA_CERT": base64.b64encode(bundle).decode(), "FL_CA_FINGERPRINT": fp(bundle)})

    cfg = load_config("supernode", {"FL_TLS_ENABLED": "YES"})
    paths = Paths(tmp_path / "n")
    client = OneGateClient(access_for(gate, node))
    installed = lambda: [fingerprint(c) for c in load_certs(paths.ca_cert.read_bytes())]  # noqa: E731
    # First contact: a bundle is published, exactly one CA is taken: the one FL_CA_FINGERPRINT names.
    publish(one + two)
    boot.discover(cfg, paths, client, 5, lambda _: None)
    assert installed() == [fp(one)] and boot.pinned_ca(paths)["fingerprints"] == [fp(one)]
    # A rotation on the SuperLink: the bundle holds the pinned CA, so it is taken whole (and pinned).
    publish(one + nxt)
    boot.discover(cfg, paths, client, 5, lambda _: None)
    assert installed() == [fp(one), fp(nxt)]
    # After the rotation the next CA heads the bundle; then the old one is dropped: still pinned.
    publish(nxt)
    boot.discover(cfg, paths, client, 5, lambda _: None)
    assert installed() == [fp(nxt)] and boot.pinned_ca(paths)["fingerprint"] == fp(nxt)
    # A bundle that holds no pinned CA is refused, whatever else it holds.
    publish(evil + two)
    with pytest.raises(boot.CaPinError):
        boot.discover(cfg, paths, client, 5, lambda _: None)
    assert installed() == [fp(nxt)]


def test_a_discovered_endpoint_is_validated_like_an_address(gate: OneGateServer, tmp_path: Path) -> None:
    link, node, _ = _service(gate)
    _publish_ca(gate, link, make_ca_pem())
    for hostile in ("--insecure", "10.0.0.1:9092 --isolation process", "a" * 400 + ":9092", "fe80::1%eth0:9092"):
        link.user_template["FL_ENDPOINT"] = hostile
        with pytest.raises(DiscoveryTimeout, match="not host:port"):
            boot.discover(load_config("supernode", {"FL_TLS_ENABLED": "YES"}), Paths(tmp_path / hostile[:8]),
                          OneGateClient(access_for(gate, node)), 1.2, lambda _: None)


def test_a_key_on_the_context_cdrom_never_reaches_onegate(gate: OneGateServer, tmp_path: Path) -> None:
    """FL_WG_PRIVATE_KEY=file:NAME: the key is read from the CD (MOUNT_DIR, as one-context mounts it)
    and CONTEXT, hence OneGate's extended service document, holds only the name."""
    key = base64.b64encode(os.urandom(32)).decode()
    cd = tmp_path / "cd"
    cd.mkdir()
    (cd / "wg0.key").write_text(key + "\n")
    values = {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.1/24", "FL_WG_PRIVATE_KEY": "file:wg0.key",
              "FL_WG_PEER_PUBLIC_KEY": "yNr3m6SL0pNqY0bRN0n6H0Hjh8m0wY9bZQ0hQ2m3W1E=",
              "FL_WG_PEER_ALLOWED_IPS": "10.10.9.2/32", "ETH0_IP": "192.0.2.10"}
    link = gate.add_vm("superlink_0_(service_21)", context=values)
    other = gate.add_vm("supernode_0_(service_21)")
    gate.add_service("flower", {"superlink": [link], "supernode": [other]}, service_id=21)
    ctx = tmp_path / "context.sh"
    ctx.write_text(render(values))
    root = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "superlink", "--context",
                          str(ctx), "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MOUNT_DIR": str(cd)})
    assert out.returncode == 0, out.stderr
    from flower_ctx.wireguard import public_key_from_private

    assert (root / "etc/wireguard/wg0.key").read_text().strip() == key  # the CD's key is the one in use
    assert public_key_from_private(key) in out.stdout
    doc = OneGateClient(access_for(gate, other)).get_service(extended=True)
    text = json.dumps(doc)
    assert "file:wg0.key" in text and key not in text  # the other VM sees the name, never the key
    assert key not in out.stdout + out.stderr
    # Without the CD (an operator's run elsewhere) the value cannot be read: a named error, exit 2.
    missing = subprocess.run([sys.executable, "-m", "flower_ctx", "configure", "--role", "superlink", "--context",
                              str(ctx), "--root", str(tmp_path / "r2")], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env={k: v for k, v in os.environ.items() if k != "MOUNT_DIR"})
    assert missing.returncode == 2 and "FL_WG_PRIVATE_KEY" in missing.stderr and "MOUNT_DIR" in missing.stderr


def test_file_values_name_a_file_not_a_path(tmp_path: Path) -> None:
    from flower_ctx.errors import ValidationError

    for bad in ("file:../etc/shadow", "file:/etc/shadow", "file:a/b", "file:"):
        with pytest.raises(ValidationError, match="FL_SSL_KEYFILE: .*not a path"):
            load_config("superlink", {"FL_SSL_KEYFILE": bad}, token=None)


def test_configure_warns_about_a_secret_written_in_a_service_vms_context(gate: OneGateServer) -> None:
    from flower_ctx.commands.configure import _secret_warning

    link, node, _ = _service(gate)
    base = {"FL_WG_ENABLED": "YES", "FL_WG_ADDRESS": "10.10.9.1/24", "FL_WG_PEER_ALLOWED_IPS": "10.10.9.2/32",
            "FL_WG_PEER_PUBLIC_KEY": "yNr3m6SL0pNqY0bRN0n6H0Hjh8m0wY9bZQ0hQ2m3W1E=",
            "ONEGATE_ENDPOINT": gate.url, "VMID": str(link.id)}
    key = base64.b64encode(os.urandom(32)).decode()
    inline = load_config("superlink", {**base, "FL_WG_PRIVATE_KEY": key}, token=link.token)
    (warning,) = _secret_warning(inline, Paths())  # Paths(): the VM's own root; nothing is written
    assert "FL_WG_PRIVATE_KEY" in warning and "OneFlow service 21" in warning and "FILES_DS" in warning
    assert key not in warning
    assert _secret_warning(load_config("superlink", base, token=link.token), Paths()) == []  # generated on the VM
    alone = gate.add_vm("not-in-a-service")
    solo = load_config("superlink", {**base, "VMID": str(alone.id), "FL_WG_PRIVATE_KEY": key}, token=alone.token)
    assert _secret_warning(solo, Paths()) == []


def test_a_superlinks_rewritten_attributes_are_published_again_and_said(gate: OneGateServer, tmp_path: Path,
                                                                         stage: Path) -> None:
    """The SuperLink's side of the same attack: its watch reads its VM back at every resync, publishes
    its own values again and names the attributes someone else rewrote."""
    from tests.test_watch import Scripted, _configure, _context, _watch

    link, _, rogue = _service(gate)
    ctx = _context(tmp_path, gate, link, FL_TLS_ENABLED="YES")
    _configure(ctx, stage)
    said: list[str] = []
    w = _watch(ctx, stage, Scripted(), said)
    w.tick()
    genuine = gate.user_template(link)
    assert genuine["FL_READY"] == "YES" and genuine["FL_CA_CERT"]
    w._synced = float("-inf")  # a resync with nothing rewritten: nothing said
    w.tick()
    assert not [s for s in said if "rewrite" in s]

    evil = make_ca_pem("attacker CA")
    evil_fp = fingerprint(load_certs(evil)[0])
    assert _rewrite_as(gate, rogue, link, {"FL_CA_CERT": base64.b64encode(evil).decode(),
                                           "FL_CA_FINGERPRINT": evil_fp, "FL_ENDPOINT": "192.0.2.66:9092"}) == 200
    assert gate.user_template(link)["FL_CA_FINGERPRINT"] == evil_fp  # the attack is real
    w._synced = float("-inf")  # as if RESYNC_S had passed
    w.tick()
    now = gate.user_template(link)
    assert {k: now[k] for k in ("FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_ENDPOINT")} == \
        {k: genuine[k] for k in ("FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_ENDPOINT")}
    (line,) = [s for s in said if "rewrite" in s]
    assert all(n in line for n in ("FL_CA_CERT", "FL_CA_FINGERPRINT", "FL_ENDPOINT")), line


def test_a_refusal_published_as_fl_error_keeps_both_fingerprints() -> None:
    from flower_ctx.readiness import sanitize_error

    pinned, offered = (fingerprint(load_certs(make_ca_pem(n))[0]) for n in ("pinned", "offered"))
    published = sanitize_error(boot.refusal_message(pinned, offered, "100"))
    assert pinned in published and offered in published, published


def test_bootstrap_after_a_reboot_looks_again_and_is_not_ready_past_a_refused_ca(
        gate: OneGateServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At boot a SuperNode looks at OneGate again: a rewritten CA is refused there too, and bootstrap
    ends not ready at once (one-apps' net-99 then stays silent) even though Flower itself answers;
    with the SuperLink's own CA back, the same bootstrap is ready."""
    import time

    from flower_ctx.commands import bootstrap as bs
    from flower_ctx.health import Health

    link, node, rogue = _service(gate)
    genuine = make_ca_pem("genuine SuperLink CA")
    _publish_ca(gate, link, genuine)
    paths = Paths(tmp_path / "node")
    cfg = load_config("supernode", {"FL_TLS_ENABLED": "YES"})
    client = OneGateClient(access_for(gate, node))
    boot.discover(cfg, paths, client, 5, lambda _: None)
    monkeypatch.setattr(bs, "check", lambda *a, **k: Health(True, "SuperLink verified, SuperNode accepted"))
    evil = make_ca_pem("attacker CA")
    evil_fp = fingerprint(load_certs(evil)[0])
    _rewrite_as(gate, rogue, link, {"FL_CA_CERT": base64.b64encode(evil).decode(), "FL_CA_FINGERPRINT": evil_fp})
    said: list[str] = []
    boot.look_again(cfg, paths, client, said.append)
    t0 = time.monotonic()
    health = bs._wait_health(cfg, paths, None, 30)
    assert not health.ok and health.kind == "ca_refused" and time.monotonic() - t0 < 2  # no 30 s wait
    assert evil_fp in health.detail and boot.pinned_ca(paths)["fingerprint"] in health.detail
    assert said and evil_fp in said[0]

    _publish_ca(gate, link, genuine)  # the SuperLink's own values again
    boot.look_again(cfg, paths, client, said.append)
    assert bs._wait_health(cfg, paths, None, 5).ok


def test_a_reordered_bundle_is_installed_without_restarting_flower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    """`ca rotate --finish` puts the next CA first in what the SuperLink publishes: a SuperNode that takes
    its bundle from OneGate installs the new order but does not restart Flower for it (same CAs: a
    restart mid-run loses a reply, as the lab's rotation drill showed); a bundle with other CAs does."""
    from flower_ctx import supervisor
    from flower_ctx.watch import Watch

    one, nxt, other = (make_ca_pem(n) for n in ("one", "next", "other"))
    paths = Paths(tmp_path)
    paths.ca_cert.parent.mkdir(parents=True)
    paths.ca_cert.write_bytes(one + nxt)
    restarts: list[str] = []

    class Running:
        running = True

    class Sup:
        def state(self, role: str) -> Running:
            return Running()

        def ensure_running(self, role: str) -> str:
            restarts.append(role)
            return "restarted"

    monkeypatch.setattr(supervisor, "for_machine", lambda p: Sup())
    w = Watch("supernode", paths, say=lambda _: None)
    cfg = load_config("supernode", {"FL_TLS_ENABLED": "YES"})
    w._take_bundle(cfg, nxt + one)
    assert paths.ca_cert.read_bytes() == nxt + one and restarts == []
    w._take_bundle(cfg, nxt + other)
    assert paths.ca_cert.read_bytes() == nxt + other and restarts == ["supernode"]


def test_a_rewritten_endpoint_is_followed_only_when_the_old_one_is_dead_and_the_new_one_proves_the_pin(
        gate: OneGateServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA is public, so an attacker in the service can publish the genuine CA with its own address.
    A SuperNode's watch moves to a newly published endpoint only when the one it uses no longer answers
    and the new one completes a handshake verified with the pinned CA (which the attacker, without the
    CA's key, cannot). The probes are scripted here; tests of health.probe cover the handshake itself."""
    from flower_ctx import health
    from flower_ctx.health import runtime_doc, runtime_target
    from flower_ctx.watch import Watch

    link, node, rogue = _service(gate)
    genuine = make_ca_pem("genuine SuperLink CA")
    _publish_ca(gate, link, genuine)  # FL_ENDPOINT 192.0.2.10:9092
    paths = Paths(tmp_path / "node")
    cfg = load_config("supernode", {"FL_TLS_ENABLED": "YES", "ONEGATE_ENDPOINT": gate.url, "VMID": str(node.id)},
                      token=node.token)
    boot.discover(cfg, paths, OneGateClient(access_for(gate, node)), 5, lambda _: None)
    dialled = lambda: str(runtime_target(runtime_doc(paths, "supernode")))  # noqa: E731
    assert dialled() == "192.0.2.10:9092"
    _rewrite_as(gate, rogue, link, {"FL_ENDPOINT": "192.0.2.66:9092"})  # the genuine CA, the attacker's address

    class Probe:
        def __init__(self, ok: bool) -> None:
            self.ok = ok

    answers: dict[str, bool] = {}
    monkeypatch.setattr(health, "probe_with_local_ca",
                        lambda p, target, timeout, source=None: Probe(answers[str(target)]))
    w = Watch("supernode", paths, say=lambda _: None,
              client_factory=lambda access: OneGateClient(access, timeout=2, retries=0))
    for current_ok, new_ok in ((True, True), (True, False), (False, False)):
        answers.update({"192.0.2.10:9092": current_ok, "192.0.2.66:9092": new_ok})
        w._recheck_publication(cfg)
        assert dialled() == "192.0.2.10:9092", (current_ok, new_ok)  # not followed
    answers.update({"192.0.2.10:9092": False, "192.0.2.66:9092": True})  # a real move: proves the pinned CA
    w._recheck_publication(cfg)
    assert dialled() == "192.0.2.66:9092"
