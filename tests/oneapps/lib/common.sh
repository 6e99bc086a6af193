# shellcheck shell=bash
# ---------------------------------------------------------------------------------------------
# Test double of one-apps' appliances/lib/common.sh: the helpers an appliance script may call.
# Written from the research notes (opennebula-more.md 4.1/4.4), not from upstream code. Only what
# the Flower hook and the framework double use: msg, is_true, default_service_help.
# ---------------------------------------------------------------------------------------------

# msg LEVEL TEXT...: print a message. Like upstream, `msg error` returns 1, so under `set -e` a
# bare `msg error ...` inside a step aborts that step.
msg() {
    local level="${1:-info}"
    shift || true
    case "${level}" in
        error)
            echo "[ERROR] $*" >&2
            return 1
            ;;
        warning) echo "[WARNING] $*" >&2 ;;
        debug) echo "[DEBUG] $*" >&2 ;;
        *) echo "[INFO] $*" ;;
    esac
}

# is_true NAME: true when the variable NAME (its name, not its value) holds 1, true, yes or y in
# any case. Upstream evaluates the name; a name that is not an identifier is simply false here.
is_true() {
    local _name="${1:-}" _value
    [[ "${_name}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || return 1
    eval "_value=\"\${${_name}:-}\""
    case "${_value,,}" in
        1 | true | yes | y) return 0 ;;
    esac
    return 1
}

# default_service_help: ONE_SERVICE_PARAMS as rows of 4 (NAME stage description input-spec),
# stopping at the first empty NAME; a non-empty 4th field is marked '*' (given as a user input).
default_service_help() {
    local i name stage desc spec
    echo "${ONE_SERVICE_NAME:-Service appliance}"
    echo
    echo "Parameters (* = provided via USER_INPUTS):"
    for ((i = 0; i + 3 < ${#ONE_SERVICE_PARAMS[@]}; i += 4)); do
        name="${ONE_SERVICE_PARAMS[i]}"
        [ -n "${name}" ] || break
        stage="${ONE_SERVICE_PARAMS[i + 1]}"
        desc="${ONE_SERVICE_PARAMS[i + 2]}"
        spec="${ONE_SERVICE_PARAMS[i + 3]}"
        printf '  %-36s %-10s %s %s\n' "${name}" "${stage}" "$([ -n "${spec}" ] && echo '*' || echo ' ')" "${desc}"
    done
}
