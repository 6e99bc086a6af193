#!/usr/bin/env bash
# ---------------------------------------------------------------------------------------------
# Test double of one-apps' appliances/service.sh, the service manager installed in an appliance
# image as /etc/one-appliance/service. Written from the research notes (opennebula-more.md 4.1,
# opennebula-contracts.md 4.2), not from upstream code. What it reproduces:
#
#   service install [VERSION] | configure [reconfigure] | bootstrap | help
#
# - `set -e` and `umask 0077` for everything, the appliance's steps included;
# - common.sh, functions.sh, then the appliance script /etc/one-appliance/service.d/appliance.sh
#   sourced in this same shell on every invocation (help too), so its top-level code runs each time;
# - nothing exported: the steps see what the caller exported (one-contextd: every CONTEXT variable);
# - a live pid in /var/run/one-appliance-service.pid: exit 0; otherwise re-run under `flock -xn`;
# - the status file /etc/one-appliance/status, gated by _check_service_status (skip = exit 0,
#   abort = exit 1), <step>_started, the step with its output in /var/log/one-appliance/<step>.log,
#   <step>_success; the exit trap always calls service_cleanup and turns *_started into *_failure;
# - ONE_SERVICE_REPORT=/etc/one-appliance/config for the appliance's report;
#   ONE_SERVICE_RECONFIGURABLE checked with is_true (1/true/yes/y, any case).
# Not reproduced: the MOTD, create_one_service_metadata, the Ruby manager (service.rb).
# ---------------------------------------------------------------------------------------------
# shellcheck disable=SC2034  # the ONE_SERVICE_* variables are for the appliance script

ONE_SERVICE_DIR=/etc/one-appliance
ONE_SERVICE_STATUS="${ONE_SERVICE_DIR}/status"
ONE_SERVICE_REPORT="${ONE_SERVICE_DIR}/config"
ONE_SERVICE_METADATA="${ONE_SERVICE_DIR}/metadata"
ONE_SERVICE_TEMPLATE="${ONE_SERVICE_DIR}/template"
ONE_SERVICE_APPLIANCE="${ONE_SERVICE_DIR}/service.d/appliance.sh"
ONE_SERVICE_PIDFILE=/var/run/one-appliance-service.pid
ONE_SERVICE_LOGDIR=/var/log/one-appliance
ONE_SERVICE_SETUP_DIR=/opt/one-appliance
ONE_SERVICE_RECONFIGURE=false

set -e
umask 0077

# shellcheck source=tests/oneapps/lib/common.sh
. "${ONE_SERVICE_DIR}/lib/common.sh"
# shellcheck source=tests/oneapps/lib/functions.sh
. "${ONE_SERVICE_DIR}/lib/functions.sh"
# shellcheck source=/dev/null
. "${ONE_SERVICE_APPLIANCE}"

_parse_arguments "$@"

case "${_SERVICE_ACTION}" in
    install | configure | bootstrap) ;;
    help)
        if declare -F service_help >/dev/null; then
            service_help
        else
            default_service_help
        fi
        exit 0
        ;;
    *)
        echo "usage: $0 install [VERSION] | configure [reconfigure] | bootstrap | help" >&2
        exit 1
        ;;
esac

if _is_running; then
    msg info "Another instance is running (pid $(cat "${ONE_SERVICE_PIDFILE}")) - exiting"
    exit 0
fi
_lock_or_fail "$@"

trap _on_exit INT QUIT TERM EXIT
echo "$$" >"${ONE_SERVICE_PIDFILE}"

_check_service_status "${_SERVICE_ACTION}"

_set_status "${_SERVICE_ACTION}_started"
_run_logged "${_SERVICE_ACTION}" "${_SERVICE_ARGS[@]}"
_set_status "${_SERVICE_ACTION}_success"
