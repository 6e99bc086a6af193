"""Operator PKI through the real validator: a CA, an intermediate and a server built here; every
mismatch fails validation with a message naming the variable."""

from __future__ import annotations

import base64
import datetime

import pytest

from flower_ctx.config import load_config
from flower_ctx.errors import ValidationError
from tests import tls_helpers as h

NOW = datetime.datetime.now(datetime.timezone.utc)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pki() -> dict[str, h.Issued]:
    root = h.build_ca("Operator Root")
    inter = h.build_ca("Operator Intermediate", issuer=root)
    return {
        "root": root,
        "inter": inter,
        "server": h.build_server(inter, ["DNS:superlink.example.org", "IP:192.0.2.5"]),
        "other_root": h.build_ca("Another Root"),
    }


def values(ca: bytes, cert: bytes, key: bytes) -> dict[str, str]:
    return {"FL_SSL_CA_CERTFILE": b64(ca), "FL_SSL_CERTFILE": b64(cert), "FL_SSL_KEYFILE": b64(key)}


def problems(vals: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_config("superlink", vals)
    return dict(info.value.problems)


def test_valid_chain_through_an_intermediate(pki: dict[str, h.Issued]) -> None:
    srv, inter, root = pki["server"], pki["inter"], pki["root"]
    cfg = load_config("superlink", values(root.cert_pem, srv.cert_pem + inter.cert_pem, srv.key_pem))
    assert cfg.operator_pki
    assert cfg.pki.key_pem is not None and cfg.pki.key_pem.reveal() == srv.key_pem
    assert "PRIVATE" not in repr(cfg)  # the key is a Secret: never printed


def test_key_of_another_certificate(pki: dict[str, h.Issued]) -> None:
    srv, inter, root = pki["server"], pki["inter"], pki["root"]
    stray = h.build_server(inter, ["DNS:x.example.org"])
    got = problems(values(root.cert_pem, srv.cert_pem + inter.cert_pem, stray.key_pem))
    assert list(got) == ["FL_SSL_KEYFILE"] and "does not match" in got["FL_SSL_KEYFILE"]


def test_certificate_from_another_ca(pki: dict[str, h.Issued]) -> None:
    srv, inter = pki["server"], pki["inter"]
    got = problems(values(pki["other_root"].cert_pem, srv.cert_pem + inter.cert_pem, srv.key_pem))
    assert list(got) == ["FL_SSL_CERTFILE"] and "does not chain" in got["FL_SSL_CERTFILE"]


def test_missing_intermediate(pki: dict[str, h.Issued]) -> None:
    srv, root = pki["server"], pki["root"]
    got = problems(values(root.cert_pem, srv.cert_pem, srv.key_pem))
    assert list(got) == ["FL_SSL_CERTFILE"] and "intermediates" in got["FL_SSL_CERTFILE"]


def test_expired_certificate(pki: dict[str, h.Issued]) -> None:
    inter, root = pki["inter"], pki["root"]
    old = h.build_server(inter, ["IP:192.0.2.5"], NOW - datetime.timedelta(days=400), NOW - datetime.timedelta(days=2))
    got = problems(values(root.cert_pem, old.cert_pem + inter.cert_pem, old.key_pem))
    assert list(got) == ["FL_SSL_CERTFILE"] and "expired" in got["FL_SSL_CERTFILE"]


def test_server_certificate_given_as_the_ca(pki: dict[str, h.Issued]) -> None:
    srv, inter = pki["server"], pki["inter"]
    got = problems(values(srv.cert_pem, srv.cert_pem + inter.cert_pem, srv.key_pem))
    assert "FL_SSL_CA_CERTFILE" in got and "not a CA" in got["FL_SSL_CA_CERTFILE"]


@pytest.mark.parametrize("missing", ["FL_SSL_CA_CERTFILE", "FL_SSL_CERTFILE", "FL_SSL_KEYFILE"])
def test_only_two_of_three(pki: dict[str, h.Issued], missing: str) -> None:
    srv, inter, root = pki["server"], pki["inter"], pki["root"]
    vals = values(root.cert_pem, srv.cert_pem + inter.cert_pem, srv.key_pem)
    del vals[missing]
    got = problems(vals)
    assert list(got) == [missing] and "required" in got[missing]


def test_messages_never_contain_the_key(pki: dict[str, h.Issued]) -> None:
    srv, inter = pki["server"], pki["inter"]
    stray = h.build_server(inter, ["DNS:x.example.org"])
    with pytest.raises(ValidationError) as info:
        load_config("superlink", values(pki["other_root"].cert_pem, srv.cert_pem, stray.key_pem))
    body = b"".join(stray.key_pem.splitlines()[1:-1]).decode()
    text = str(info.value)
    assert all(body[i : i + 16] not in text for i in range(0, len(body) - 16, 8))
