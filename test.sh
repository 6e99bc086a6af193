#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages (when root), two virtualenvs, then pytest.
# Extra arguments go to pytest.
#   .venv            the project with its test extra and Flower 1.39 (flower139 extra): pytest runs here;
#                    the gRPC-era tests (and the lab with FLOWER_CTX_LAB_FLOWER=1.39) start Flower from it
#   .venv-flwr142    the project (editable) with the flower extra, Flower 1.42 (what the image bakes):
#                    the HTTP-era tests and the three-zone lab start Flower, flower-ctx run and flwr from it
#                    (tests/flower_envs.py)
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for pair in wireguard-go:wireguard-go wg:wireguard-tools ip:iproute2 nft:nftables nsenter:util-linux \
                unshare:util-linux debootstrap:debootstrap shellcheck:shellcheck systemd-analyze:systemd \
                ss:iproute2 ssh:openssh-client /usr/sbin/sshd:openssh-server; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing system packages: ${missing[*]}"
        # A failed refresh (no network to the mirror, a temp dir apt cannot use) still leaves the cached lists.
        apt-get update -qq || echo "apt-get update failed; installing from the cached package lists"
        # The tests start their own sshd inside a test namespace: the package must not start one on this
        # machine (policy-rc.d 101 = "do not start services"), and only for the time of this install.
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
            policy=/usr/sbin/policy-rc.d
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || { [ -z "$policy" ] || rm -f "$policy"; exit 1; }
        [ -z "$policy" ] || rm -f "$policy"
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,flower139]'
if [ ! -x .venv-flwr142/bin/python ]; then
    "$PYTHON" -m venv .venv-flwr142
fi
.venv-flwr142/bin/python -m pip install -q --disable-pip-version-check -e '.[flower]'
.venv/bin/ruff check flower_ctx tests bench
exec .venv/bin/python -m pytest "$@"
