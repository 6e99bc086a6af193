"""A renewed server certificate reaches the running Flower without a restart.

Flower reads its certificate once, at start. The renewal (``flower-ctx renew``, daily) writes a new
``server.pem``/``server.key`` under the same CA; a restart to pick them up would drop every
SuperNode connection and fail the runs in flight. Instead ``flower-ctx run`` arranges, before
Flower starts, that:

- gRPC (the 1.39 Fleet API): ``grpc.ssl_server_credentials`` built from our files become
  ``grpc.dynamic_ssl_server_credentials``, whose fetcher grpcio calls before every new TLS
  handshake: when the files changed, new handshakes get the new pair; open connections go on.
- uvicorn (Flower's HTTPS APIs): the ``ssl.SSLContext`` it builds from our files is kept, and a
  background thread loads the new pair into it (``load_cert_chain`` on a live context applies to
  the next handshakes).

Both read the pair through ``files.read_file`` and take it only when the key matches the
certificate (a renewal writes the key first, then the certificate: a half-written pair is never
served).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("flower_ctx.certreload")

POLL_S = 10.0  # uvicorn contexts: how often the files are looked at (two small reads)


class _Pair:
    """The server certificate and key files, read anew when they change, served only when they match."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.certfile, self.keyfile = certfile, keyfile
        self._seen: dict[str, tuple[bytes, bytes]] = {}  # per consumer (gRPC, uvicorn): what it serves
        self.lock = threading.Lock()

    def read(self) -> tuple[bytes, bytes] | None:
        from .errors import FlowerCtxError
        from .files import read_file

        try:
            return read_file(self.certfile), read_file(self.keyfile)
        except (OSError, FlowerCtxError):
            return None

    def changed(self, consumer: str) -> tuple[bytes, bytes] | None:
        """The new (certificate chain, key) for ``consumer`` when the files hold a new matching pair."""
        from . import pem

        pair = self.read()
        with self.lock:
            if pair is None or pair == self._seen.get(consumer):
                return None
            try:
                if not pem.key_matches_cert(pem.load_private_key(pair[1]), pem.load_certs(pair[0])[0]):
                    return None  # mid-renewal: the key is new, the certificate not yet
            except pem.PemError:
                return None
            first = consumer not in self._seen
            self._seen[consumer] = pair
        if not first:
            log.info("%s: server certificate renewed on disk, new TLS handshakes use it (no restart)", consumer)
        return pair

    def remember(self, consumer: str, pair: tuple[bytes, bytes]) -> None:
        with self.lock:
            self._seen[consumer] = pair


_PAIR: _Pair | None = None
_CONTEXTS: list[Any] = []


def install(certfile: str, keyfile: str) -> None:
    """Hook grpcio and uvicorn (both imported here: this runs in Flower's process, before Flower)."""
    global _PAIR
    import grpc

    _PAIR = _Pair(certfile, keyfile)
    original_grpc = grpc.ssl_server_credentials

    def ssl_server_credentials(private_key_certificate_chain_pairs: Any, root_certificates: Any = None,
                               require_client_auth: bool = False) -> Any:
        pair = _PAIR.read() if _PAIR is not None else None
        given = list(private_key_certificate_chain_pairs)
        if _PAIR is None or pair is None or len(given) != 1 or (given[0][1], given[0][0]) != pair:
            return original_grpc(given, root_certificates, require_client_auth)  # not our files: as asked
        _PAIR.remember("grpc", pair)

        def config(cert: bytes, key: bytes) -> Any:
            return grpc.ssl_server_certificate_configuration(((key, cert),), root_certificates=root_certificates)

        def fetch() -> Any:
            new = _PAIR.changed("grpc") if _PAIR is not None else None
            return config(*new) if new is not None else None

        log.info("gRPC server credentials reload %s when it is renewed", certfile)
        return grpc.dynamic_ssl_server_credentials(config(*pair), fetch, require_client_auth)

    grpc.ssl_server_credentials = ssl_server_credentials
    _hook_uvicorn()


def _hook_uvicorn() -> None:
    try:
        import uvicorn.config as uvicorn_config
    except ImportError:
        return
    original: Callable[..., Any] = uvicorn_config.create_ssl_context

    def create_ssl_context(*args: Any, **kwargs: Any) -> Any:
        ctx = original(*args, **kwargs)
        certfile = kwargs.get("certfile", args[0] if args else None)
        if _PAIR is not None and certfile is not None and str(Path(certfile)) == str(Path(_PAIR.certfile)):
            pair = _PAIR.read()
            if pair is not None:
                _PAIR.remember("uvicorn", pair)
            _CONTEXTS.append(ctx)
            _start_poller()
        return ctx

    uvicorn_config.create_ssl_context = create_ssl_context


_POLLER: threading.Thread | None = None


def _start_poller() -> None:
    global _POLLER
    if _POLLER is not None:
        return

    def loop() -> None:
        while True:
            time.sleep(POLL_S)
            reload_contexts()

    _POLLER = threading.Thread(target=loop, name="flower-ctx-certreload", daemon=True)
    _POLLER.start()


def reload_contexts() -> int:
    """Load a renewed pair into every kept uvicorn context; returns how many were reloaded."""
    if _PAIR is None or not _CONTEXTS:
        return 0
    new = _PAIR.changed("uvicorn")
    if new is None:
        return 0
    for ctx in _CONTEXTS:
        ctx.load_cert_chain(_PAIR.certfile, _PAIR.keyfile)
    return len(_CONTEXTS)
