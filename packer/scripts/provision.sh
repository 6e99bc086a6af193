#!/usr/bin/env bash
# ---------------------------------------------------------------------------------------------
# The single install path of the Flower appliances (SuperLink and SuperNode images).
#
#   provision.sh --role superlink|supernode [--src DIR]
#
# Run as root on Ubuntu 24.04 (the Packer build) or Debian 12 (the chroot test): installs the
# system packages, the `flower` system user, the /opt/flower tree, a virtualenv with flower-ctx and
# the pinned Flower (through the `flower` extra), the systemd units and the one-apps hook. DIR is
# the flower-ctx source tree (default: two levels up from this script). Idempotent: a second run
# changes nothing it does not need to. Ends with `flower-ctx --version`.
# ---------------------------------------------------------------------------------------------
set -euo pipefail
umask 0022

ROLE=""
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FLOWER_HOME=/opt/flower
VENV="${FLOWER_HOME}/venv"
FLOWER_USER=flower
APPLIANCE_DIR=/etc/one-appliance
APT_PACKAGES=(python3 python3-venv ca-certificates wireguard-tools wireguard-go iproute2 nftables)

usage() {
    echo "usage: $0 --role superlink|supernode [--src DIR]" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
        --src) SRC="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
case "${ROLE}" in superlink | supernode) ;; *) usage ;; esac
[ -f "${SRC}/setup.cfg" ] || { echo "provision.sh: ${SRC} is not the flower-ctx source tree" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "provision.sh: must run as root" >&2; exit 1; }

say() { echo "provision: $*"; }

BUILD_DIR=""
trap '[ -z "${BUILD_DIR}" ] || rm -rf "${BUILD_DIR}"' EXIT

install_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # Only what is missing: a re-run does not touch apt at all.
        dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${pkg}")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "packages: all present"
        return
    fi
    say "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

create_user() {
    if getent passwd "${FLOWER_USER}" >/dev/null; then
        say "user ${FLOWER_USER}: exists"
        return
    fi
    say "user ${FLOWER_USER}: creating"
    local nologin=/usr/sbin/nologin
    [ -x "${nologin}" ] || nologin=/sbin/nologin
    useradd --system --user-group --home-dir "${FLOWER_HOME}" --no-create-home \
        --shell "${nologin}" --comment "Flower federated learning" "${FLOWER_USER}"
}

# Directory modes and owners as `flower-ctx configure` keeps them (DESIGN section 5), so the
# first configure finds nothing to fix.
create_tree() {
    install -d -m 0755 -o root -g root "${FLOWER_HOME}"
    install -d -m 0755 -o root -g root "${FLOWER_HOME}/certs" "${FLOWER_HOME}/config"
    install -d -m 0700 -o "${FLOWER_USER}" -g "${FLOWER_USER}" "${FLOWER_HOME}/state"
    install -d -m 0700 -o root -g root /etc/flower-ctx /etc/wireguard
}

install_venv() {
    if [ ! -x "${VENV}/bin/python3" ]; then
        say "virtualenv: creating ${VENV}"
        python3 -m venv "${VENV}"
    fi
    say "virtualenv: installing flower-ctx with the flower extra from ${SRC}"
    # Build from a private copy: the source tree may be read-only or shared.
    BUILD_DIR=$(mktemp -d)
    tar -C "${SRC}" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ \
        -cf - . | tar -C "${BUILD_DIR}" -xf -
    "${VENV}/bin/python3" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        "${BUILD_DIR}[flower]"
    rm -rf "${BUILD_DIR}"
    BUILD_DIR=""
    ln -sfn "${VENV}/bin/flower-ctx" /usr/local/bin/flower-ctx
}

install_units() {
    local unit found=0
    for unit in "${SRC}"/systemd/*.service "${SRC}"/systemd/*.timer; do
        [ -f "${unit}" ] || continue
        found=1
        install -m 0644 -o root -g root "${unit}" "/etc/systemd/system/$(basename "${unit}")"
        say "unit: $(basename "${unit}")"
    done
    [ "${found}" = 1 ] || { echo "provision.sh: no unit files in ${SRC}/systemd" >&2; exit 1; }
    # Not enabled: the one-apps bootstrap step starts the role's unit after configure, every boot.
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
}

install_hook() {
    install -d -m u=rwx,g=rx,o= "${APPLIANCE_DIR}" "${APPLIANCE_DIR}/service.d" "${APPLIANCE_DIR}/flower"
    install -m 0644 "${SRC}/one-apps-hooks/appliance.sh" "${APPLIANCE_DIR}/service.d/appliance.sh"
    install -m 0644 "${SRC}/one-apps-hooks/params-${ROLE}.sh" "${APPLIANCE_DIR}/flower/params-${ROLE}.sh"
    local tmp
    tmp=$(mktemp "${APPLIANCE_DIR}/flower/role.XXXXXX")
    echo "${ROLE}" >"${tmp}"
    chmod 0644 "${tmp}"
    mv -f "${tmp}" "${APPLIANCE_DIR}/flower/role"
    say "one-apps hook: ${APPLIANCE_DIR}/service.d/appliance.sh (role ${ROLE})"
}

install_packages
create_user
create_tree
install_venv
install_units
install_hook
say "done: $("${VENV}/bin/flower-ctx" --version)"
