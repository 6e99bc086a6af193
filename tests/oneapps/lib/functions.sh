# shellcheck shell=bash disable=SC2034  # ONE_SERVICE_* are read by the appliance script
# ---------------------------------------------------------------------------------------------
# Test double of one-apps' appliances/lib/functions.sh: argument parsing, the lock, the status
# file and its transitions (_check_service_status), the exit trap and the step log. Written from
# the research notes (opennebula-more.md 4.1, opennebula-contracts.md 4.2), not from upstream code.
# Sourced by the service.sh double, which sets the ONE_SERVICE_* paths first.
# ---------------------------------------------------------------------------------------------

_SERVICE_ACTION=""
_SERVICE_ARGS=()
_SERVICE_FIFO=""

_parse_arguments() {
    _SERVICE_ACTION="${1:-}"
    shift || true
    _SERVICE_ARGS=("$@")
    # `service configure reconfigure`: the appliance can tell it was asked to reconfigure.
    # net-90 never passes it.
    if [ "${_SERVICE_ACTION}" = configure ] && [ "${1:-}" = reconfigure ]; then
        ONE_SERVICE_RECONFIGURE=true
    fi
}

_get_status() {
    cat "${ONE_SERVICE_STATUS}" 2>/dev/null || true
}

# Written with echo, as upstream does: the file holds the word and a newline (mode 0600 under the
# framework's umask 0077).
_set_status() {
    echo "$1" >"${ONE_SERVICE_STATUS}"
}

# A live pid in the pidfile: another instance is running; the caller exits 0.
_is_running() {
    local pid
    pid=$(cat "${ONE_SERVICE_PIDFILE}" 2>/dev/null || true)
    [ -n "${pid}" ] && kill -0 "${pid}" 2>/dev/null
}

# Re-run this script under an exclusive, non-blocking flock on itself; a second concurrent
# instance gets flock's exit status 1.
_lock_or_fail() {
    if [ -z "${_ONE_SERVICE_FLOCKED:-}" ]; then
        export _ONE_SERVICE_FLOCKED=1
        exec flock -xn "$0" "$0" "$@"
    fi
}

# The exit trap: runs on every exit of a step invocation, success included. Cleanup first, then a
# status still at <step>_started becomes <step>_failure (whichever step it names, not only the
# one this invocation was asked for), then the pidfile goes.
_on_exit() {
    local rc=$? status
    trap - INT QUIT TERM EXIT
    set +e
    if declare -F service_cleanup >/dev/null; then
        service_cleanup
    fi
    status=$(_get_status)
    case "${status}" in
        install_started | configure_started | bootstrap_started) _set_status "${status%_started}_failure" ;;
    esac
    [ -z "${_SERVICE_FIFO}" ] || rm -f "${_SERVICE_FIFO}"
    if [ "$(cat "${ONE_SERVICE_PIDFILE}" 2>/dev/null)" = "$$" ]; then
        rm -f "${ONE_SERVICE_PIDFILE}"
    fi
    exit "${rc}"
}

_reconfigurable() {
    is_true ONE_SERVICE_RECONFIGURABLE
}

# Whether STEP may run from the current status. Returns 0 to run; otherwise exits: 0 for "skip",
# 1 for "abort" (some aborts first record <step>_failure). The table of opennebula-more.md 4.1.
_check_service_status() {
    local step="$1" status
    status=$(_get_status)
    case "${step}" in
        install)
            case "${status}" in
                '') return 0 ;;
                install_success)
                    msg info "Installation was already done - skipping"
                    exit 0
                    ;;
                install_started)
                    _set_status install_failure
                    msg error "Installation was interrupted before" || true
                    exit 1
                    ;;
                *)
                    msg error "Installation cannot run from status '${status}'" || true
                    exit 1
                    ;;
            esac
            ;;
        configure)
            case "${status}" in
                '')
                    msg error "Configuration cannot run: the appliance is not installed" || true
                    exit 1
                    ;;
                install_success) return 0 ;;
                configure_success)
                    _reconfigurable && return 0
                    msg info "Configuration was already done - skipping"
                    exit 0
                    ;;
                configure_started)
                    _reconfigurable && return 0
                    _set_status configure_failure
                    msg error "Configuration was interrupted before" || true
                    exit 1
                    ;;
                configure_failure)
                    _reconfigurable && return 0
                    msg error "Configuration failed before" || true
                    exit 1
                    ;;
                bootstrap*)
                    _reconfigurable && return 0
                    msg error "Configure step will not run since the appliance is set as non-reconfigurable" || true
                    exit 1
                    ;;
                *)
                    msg error "Configuration cannot run from status '${status}'" || true
                    exit 1
                    ;;
            esac
            ;;
        bootstrap)
            case "${status}" in
                '')
                    msg error "Bootstrap cannot run: the appliance is not installed" || true
                    exit 1
                    ;;
                configure_success) return 0 ;;
                bootstrap_success)
                    _reconfigurable && return 0
                    msg info "Bootstrap was already done - skipping"
                    exit 0
                    ;;
                bootstrap_started)
                    _reconfigurable && return 0
                    _set_status bootstrap_failure
                    msg error "Bootstrap was interrupted before" || true
                    exit 1
                    ;;
                bootstrap_failure)
                    _reconfigurable && return 0
                    msg error "Bootstrap failed before" || true
                    exit 1
                    ;;
                *)
                    msg error "Bootstrap cannot run from status '${status}'" || true
                    exit 1
                    ;;
            esac
            ;;
    esac
    msg error "Unknown step '${step}'" || true
    exit 1
}

# Run service_STEP with its output appended to /var/log/one-appliance/STEP.log and passed on,
# through a named pipe read by a background tee (upstream's way). Called plainly: errexit stays
# in force inside the step, so any failing command aborts the whole invocation (the exit trap
# then records <step>_failure). The tee is not waited for: it ends when the last writer of the
# pipe closes it, so a process the step leaves behind holding its output keeps the tee alive.
_run_logged() {
    local step="$1"
    shift
    install -d -m 0700 "${ONE_SERVICE_LOGDIR}"
    _SERVICE_FIFO=$(mktemp -u "/run/one-appliance-${step}.XXXXXX")
    mkfifo -m 0600 "${_SERVICE_FIFO}"
    tee -a "${ONE_SERVICE_LOGDIR}/${step}.log" <"${_SERVICE_FIFO}" &
    "service_${step}" "$@" >"${_SERVICE_FIFO}" 2>&1
    rm -f "${_SERVICE_FIFO}"
    _SERVICE_FIFO=""
}
