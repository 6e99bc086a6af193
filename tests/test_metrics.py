"""Metrics for Prometheus (issue 15): the text the watch writes for node_exporter's textfile collector,
read back with Prometheus' own text-format parser (prometheus_client). The lifecycle e2e test scrapes
the file a real SuperLink's watch writes."""

from __future__ import annotations

import datetime

from prometheus_client.parser import text_string_to_metric_families

from flower_ctx.metrics import render


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_every_metric_parses_with_prometheus_own_parser() -> None:
    expiry = datetime.datetime(2027, 11, 28, 20, 53, tzinfo=datetime.timezone.utc)
    facts = {
        "role": "superlink", "flower_version": {"installed": "1.39.0"}, "service": {"running": True},
        "tls": {"server": {"not_after_iso": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "ca": {"not_after_iso": "2036-11-26T20:53:00Z"}},
        "federation": {"connected": 1, "supernodes": [
            {"node_id": 12, "name": 'site "b" \\ 0', "status": "online", "last_heartbeat_age": 7.5},
            {"node_id": 13, "name": "c1", "status": "offline", "last_heartbeat_age": None},
            {"node_id": 14, "name": "gone", "status": "unregistered", "last_heartbeat_age": None}]},
        "wireguard": {"peers": [{"public_key": "A" * 43 + "=", "latest_handshake_age": 12.0},
                                {"public_key": "B" * 43 + "=", "latest_handshake_age": None}]},
        "onegate": {"time": 1795900000, "published": True, "onegate_problem": None},
    }
    got = families(render(facts, ready=True, agent_version="0.1.0", now=1795900123.0))
    assert got["flower_up"][0].value == 1 and got["flower_ready"][0].value == 1
    assert got["flower_supernodes_registered"][0].value == 2 and got["flower_supernodes_connected"][0].value == 1
    (beat,) = got["flower_supernode_last_heartbeat_age_seconds"]
    assert beat.labels == {"node_id": "12", "name": 'site "b" \\ 0'} and beat.value == 7.5  # escaping round-trips
    certs = {s.labels["cert"]: s.value for s in got["flower_certificate_expiry_timestamp_seconds"]}
    assert certs["server"] == expiry.timestamp()
    assert got["flower_wireguard_peer_last_handshake_age_seconds"][0].value == 12.0
    assert got["flower_wireguard_peer_never_handshaked"][0].labels["peer"].startswith("B")
    assert got["flower_onegate_last_publication_success"][0].value == 1
    assert got["flower_ctx_info"][0].labels == {"role": "superlink", "flower_version": "1.39.0",
                                                 "agent_version": "0.1.0"}


def test_a_supernode_without_federation_or_tunnel_has_no_such_series() -> None:
    got = families(render({"role": "supernode", "service": {"running": False}}, ready=None, agent_version="x"))
    assert got["flower_up"][0].value == 0
    assert "flower_ready" not in got and "flower_supernodes_connected" not in got
