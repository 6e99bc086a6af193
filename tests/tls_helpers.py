"""Test PKI builders and real gRPC servers/clients for the TLS tests.

The PKI here is built with ``cryptography`` directly (not with flower_ctx.tls) so tests of the
agent's certificates and of operator PKI do not check the code with itself.
Run as ``python -m tests.tls_helpers dial-matrix CERTS_DIR ADDR...`` inside a network namespace: it
serves a real grpcio server on each address and dials it, printing JSON results.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
METHOD = "/flowerctx.test.Echo/Ping"


# ------------------------------------------------------------------------------------------ PKI


@dataclass
class Issued:
    cert: x509.Certificate
    key: Any

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def build_ca(
    cn: str = "Test Root CA",
    issuer: Issued | None = None,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A root CA (self-signed) or, with ``issuer``, an intermediate CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signer = issuer.key if issuer else key
    if issuer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def build_server(
    issuer: Issued,
    sans: list[str],
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Issued:
    """A server certificate for ``sans`` (``IP:...``/``DNS:...``) signed by ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(s[3:])) if s.startswith("IP:") else x509.DNSName(s[4:]) for s in sans
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("test server"))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(cert, key)


def verify_chain(leaf_pem: bytes, ca_pem: bytes, at: datetime.datetime | None = None) -> None:
    """Verify ``leaf_pem`` (leaf + optional chain) against the single trust anchor ``ca_pem`` with
    cryptography's X.509 path validation (independent of flower_ctx.pem). Raises on failure."""
    from cryptography.x509.verification import PolicyBuilder, Store

    certs = x509.load_pem_x509_certificates(leaf_pem)
    store = Store(x509.load_pem_x509_certificates(ca_pem))
    builder = PolicyBuilder().store(store)
    if at is not None:
        builder = builder.time(at)
    verifier = builder.build_server_verifier(x509.DNSName("localhost"))
    verifier.verify(certs[0], certs[1:])


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------ gRPC


def _ping(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"pong:" + request


def start_server(key_pem: bytes, chain_pem: bytes | None, hosts: list[str]) -> tuple[grpc.Server, list[int]]:
    """A real grpcio server on each host (TLS with key/chain, or plaintext when chain is None)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "flowerctx.test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(_ping)}
    )
    server.add_generic_rpc_handlers((handler,))
    ports = []
    for host in hosts:
        where = f"[{host}]:0" if ":" in host else f"{host}:0"
        if chain_pem is None:
            port = server.add_insecure_port(where)
        else:
            port = server.add_secure_port(where, grpc.ssl_server_credentials([(key_pem, chain_pem)]))
        if port == 0:
            raise RuntimeError(f"could not bind {where}")
        ports.append(port)
    server.start()
    return server, ports


def grpc_call(target: str, ca_pem: bytes, name_override: str | None = None, timeout: float = 3.0) -> str:
    """One unary call over a TLS channel trusting only ``ca_pem``; "ok" or the gRPC error code."""
    options = [("grpc.ssl_target_name_override", name_override)] if name_override else []
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(target, creds, options=options) as channel:
        call = channel.unary_unary(METHOD)
        try:
            reply = call(b"x", timeout=timeout)
        except grpc.RpcError as exc:
            return f"error:{exc.code().name}"
    return "ok" if reply == b"pong:x" else f"bad reply {reply!r}"


def _dial_matrix(certs_dir: Path, addresses: list[str]) -> dict[str, Any]:
    """Serve the generated server key/cert on each address and dial it trusting only ca.crt."""
    from flower_ctx.probe import probe_tls

    key = (certs_dir / "server.key").read_bytes()
    chain = (certs_dir / "server.pem").read_bytes()
    ca = (certs_dir / "ca.crt").read_bytes()
    server, ports = start_server(key, chain, addresses)
    try:
        out = {}
        for addr, port in zip(addresses, ports, strict=True):
            target = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            probe = probe_tls(addr, port, ca)
            out[addr] = {"grpc": grpc_call(target, ca), "probe": probe.kind.value, "message": probe.message}
        return out
    finally:
        server.stop(0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["dial-matrix"]:
        print(json.dumps(_dial_matrix(Path(argv[1]), argv[2:])))
        return 0
    print(f"usage: {sys.argv[0]} dial-matrix CERTS_DIR ADDR...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
