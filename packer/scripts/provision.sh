#!/usr/bin/env bash
# ---------------------------------------------------------------------------------------------
# The single install path of the Flower appliances (SuperLink and SuperNode images).
#
#   provision.sh --role superlink|supernode [--src DIR]
#   provision.sh --role superlink|supernode --files-only [--venv DIR] [--root ROOT] [--src DIR]
#
# Run as root on Ubuntu 24.04 (the Packer build) or Debian 12 (the chroot test): installs the
# system packages, the `flower` system user, the /opt/flower tree, a virtualenv with flower-ctx and
# the pinned Flower (through the `flower` extra), the systemd units, the one-apps hook, and the
# operator's links /usr/local/bin/flower-ctx and /usr/local/bin/flwr. DIR is the flower-ctx source
# tree (default: two levels up from this script). Idempotent: a second run changes nothing it does
# not need to. Ends with `flower-ctx --version`.
#
# --files-only installs only the appliance's own files, with the same functions as the full run:
# the user, the /opt/flower tree, the units, the hook with its params and role file, and the links;
# no apt, no virtualenv. `--venv DIR` points the image's virtualenv path (/opt/flower/venv, what the
# units and the hook run) at an existing virtualenv; `--root ROOT` installs into another root
# (ROOT/etc/passwd must exist; the user is added with useradd --prefix). The test rigs use it to give
# each simulated VM exactly the files an image has.
#
# umask 0022 for the whole run: files pip and venv write must be readable by the `flower` user that
# runs Flower, whatever umask the caller had (one-apps runs its steps under umask 0077).
# ---------------------------------------------------------------------------------------------
set -euo pipefail
umask 0022

ROLE=""
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FILES_ONLY=0
ROOT=/
VENV_TARGET=""
FLOWER_HOME=/opt/flower
VENV="${FLOWER_HOME}/venv"
FLOWER_USER=flower
APPLIANCE_DIR=/etc/one-appliance
BIN_DIR=/usr/local/bin
APT_PACKAGES=(python3 python3-venv ca-certificates wireguard-tools wireguard-go iproute2 nftables)

usage() {
    echo "usage: $0 --role superlink|supernode [--src DIR]" >&2
    echo "       $0 --role superlink|supernode --files-only [--venv DIR] [--root ROOT] [--src DIR]" >&2
    exit 2
}

need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then
        echo "$1 needs a value" >&2
        usage
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
        --src) SRC="${2:-}"; shift $(($# > 1 ? 2 : 1)) ;;
        --files-only) FILES_ONLY=1; shift ;;
        --venv) need_value "$@"; VENV_TARGET="$2"; shift 2 ;;
        --root) need_value "$@"; ROOT="$2"; shift 2 ;;
        -h | --help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
case "${ROLE}" in superlink | supernode) ;; *) usage ;; esac
if [ "${FILES_ONLY}" = 0 ] && { [ -n "${VENV_TARGET}" ] || [ "${ROOT}" != / ]; }; then
    echo "--venv and --root go with --files-only (the full run builds the image's own virtualenv in /)" >&2
    usage
fi
[ -f "${SRC}/setup.cfg" ] || { echo "provision.sh: ${SRC} is not the flower-ctx source tree" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "provision.sh: must run as root" >&2; exit 1; }
case "${ROOT}" in /*) ;; *) echo "provision.sh: --root must be an absolute path" >&2; exit 2 ;; esac
ROOT="${ROOT%/}"  # "" for /: every installed path is "${ROOT}/abs/path"
if [ -n "${ROOT}" ] && [ ! -f "${ROOT}/etc/passwd" ]; then
    echo "provision.sh: ${ROOT}/etc/passwd missing: --root must be a system root" >&2
    exit 1
fi
if [ -n "${VENV_TARGET}" ] && [ ! -x "${ROOT}${VENV_TARGET}/bin/python3" ] && [ ! -x "${ROOT}${VENV_TARGET}/bin/python" ]; then
    echo "provision.sh: ${VENV_TARGET} is not a virtualenv (no bin/python3)" >&2
    exit 1
fi

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

# uid:gid of the flower user in the target root ("" when missing). Read from ROOT/etc/passwd, not
# from this system's user database: with --root they are different files.
flower_ids() {
    awk -F: -v u="${FLOWER_USER}" '$1 == u { print $3 ":" $4; exit }' "${ROOT}/etc/passwd"
}

create_user() {
    if [ -n "$(flower_ids)" ]; then
        say "user ${FLOWER_USER}: exists"
        return
    fi
    say "user ${FLOWER_USER}: creating"
    local nologin=/usr/sbin/nologin
    [ -x "${ROOT}${nologin}" ] || nologin=/sbin/nologin
    local -a prefix=()
    [ -z "${ROOT}" ] || prefix=(--prefix "${ROOT}")
    useradd "${prefix[@]}" --system --user-group --home-dir "${FLOWER_HOME}" --no-create-home \
        --shell "${nologin}" --comment "Flower federated learning" "${FLOWER_USER}"
}

# Directory modes and owners as `flower-ctx configure` keeps them (DESIGN section 5), so the
# first configure finds nothing to fix.
create_tree() {
    local ids
    ids=$(flower_ids)
    install -d -m 0755 -o 0 -g 0 "${ROOT}${FLOWER_HOME}"
    install -d -m 0755 -o 0 -g 0 "${ROOT}${FLOWER_HOME}/certs" "${ROOT}${FLOWER_HOME}/config"
    install -d -m 0700 -o "${ids%:*}" -g "${ids#*:}" "${ROOT}${FLOWER_HOME}/state"
    install -d -m 0700 -o 0 -g 0 "${ROOT}/etc/flower-ctx" "${ROOT}/etc/wireguard"
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
}

# --files-only --venv DIR: the image's virtualenv path becomes a link to DIR.
link_venv() {
    [ -n "${VENV_TARGET}" ] || return 0
    [ "${VENV_TARGET%/}" != "${VENV}" ] || return 0
    local at="${ROOT}${VENV}"
    if [ -e "${at}" ] && [ ! -L "${at}" ]; then
        echo "provision.sh: ${at} is a real virtualenv; refusing to replace it with a link to ${VENV_TARGET}" >&2
        exit 1
    fi
    ln -sfn "${VENV_TARGET%/}" "${at}"
    say "virtualenv: ${VENV} -> ${VENV_TARGET%/}"
}

# The operator's commands on PATH: flower-ctx and Flower's CLI (flwr run, flwr ls, flwr supernode ...).
install_links() {
    local name
    install -d -m 0755 "${ROOT}${BIN_DIR}"
    for name in flower-ctx flwr; do
        ln -sfn "${VENV}/bin/${name}" "${ROOT}${BIN_DIR}/${name}"
        say "link: ${BIN_DIR}/${name} -> ${VENV}/bin/${name}"
    done
}

install_units() {
    local unit found=0
    install -d -m 0755 "${ROOT}/etc/systemd/system"
    for unit in "${SRC}"/systemd/*.service "${SRC}"/systemd/*.timer; do
        [ -f "${unit}" ] || continue
        found=1
        install -m 0644 -o 0 -g 0 "${unit}" "${ROOT}/etc/systemd/system/$(basename "${unit}")"
        say "unit: $(basename "${unit}")"
    done
    [ "${found}" = 1 ] || { echo "provision.sh: no unit files in ${SRC}/systemd" >&2; exit 1; }
    # Not enabled: the one-apps bootstrap step starts the role's unit after configure, every boot.
    if [ -z "${ROOT}" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
}

install_hook() {
    local dir="${ROOT}${APPLIANCE_DIR}"
    install -d -m u=rwx,g=rx,o= "${dir}" "${dir}/service.d" "${dir}/flower"
    install -m 0644 "${SRC}/one-apps-hooks/appliance.sh" "${dir}/service.d/appliance.sh"
    install -m 0644 "${SRC}/one-apps-hooks/params-${ROLE}.sh" "${dir}/flower/params-${ROLE}.sh"
    if [ "${ROLE}" = supernode ]; then
        # The SuperNode image is also the site gateway (CONTEXT FL_APPLIANCE_ROLE=gateway).
        install -m 0644 "${SRC}/one-apps-hooks/params-gateway.sh" "${dir}/flower/params-gateway.sh"
    fi
    local tmp
    tmp=$(mktemp "${dir}/flower/role.XXXXXX")
    echo "${ROLE}" >"${tmp}"
    chmod 0644 "${tmp}"
    mv -f "${tmp}" "${dir}/flower/role"
    say "one-apps hook: ${APPLIANCE_DIR}/service.d/appliance.sh (role ${ROLE})"
}

# The appliance's own files: everything but packages and the virtualenv's contents.
install_files() {
    create_user
    create_tree
    link_venv
    install_units
    install_hook
    install_links
}

if [ "${FILES_ONLY}" = 1 ]; then
    install_files
    ctx="${ROOT}${VENV}/bin/flower-ctx"
    if [ -z "${ROOT}" ] && [ -x "${ctx}" ]; then
        say "done (files only): $("${ctx}" --version)"
    else
        say "done (files only)"
    fi
    exit 0
fi

install_packages
install_venv
install_files
say "done: $("${VENV}/bin/flower-ctx" --version)"
