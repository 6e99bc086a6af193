# shellcheck shell=bash disable=SC2034  # the ONE_SERVICE_* variables are read by the one-apps framework
# ---------------------------------------------------------------------------------------------
# Flower SuperLink / SuperNode appliance: the one-apps service hook.
#
# Installed as /etc/one-appliance/service.d/appliance.sh and sourced by the one-apps service
# manager (/etc/one-appliance/service), which runs service_install once at image build time and
# service_configure + service_bootstrap at every boot and context change (net-90). All the work is
# done by flower-ctx; this file only maps the one-apps lifecycle onto it.
#
# The role is fixed per image: /etc/one-appliance/flower/role holds "superlink" or "supernode"
# (written by packer/scripts/provision.sh). A VM of the SuperNode image whose VM template sets
# CONTEXT FL_APPLIANCE_ROLE=gateway is its zone's site gateway instead (flower-ctx --role gateway:
# WireGuard to the hub and forwarding, no Flower); see docs/site-gateways.md. READY=YES is published by `flower-ctx bootstrap`
# itself once Flower really serves; a failed bootstrap returns non-zero, so the one-apps status
# becomes bootstrap_failure and its net-99 never reports READY either.
#
# Environment honoured (for staging trees and tests; unset on a real VM):
#   FLOWER_CTX_ROOT       staging root: flower-ctx gets --root DIR, the report is written under DIR
#   FLOWER_CTX            the flower-ctx executable (default: /opt/flower/venv/bin/flower-ctx)
#   FLOWER_ROLE           the role (default: read from the role file)
#   FLOWER_APPLIANCE_DIR  where the role file and the generated params live
# ---------------------------------------------------------------------------------------------

ONE_SERVICE_NAME='Service Flower - federated learning (SuperLink / SuperNode)'
ONE_SERVICE_VERSION='1.42.0'  # the Flower the image bakes (setup.cfg extra `flower`)
ONE_SERVICE_BUILD=$(date +%s)
ONE_SERVICE_SHORT_DESCRIPTION='Flower federated learning node configured from CONTEXT by flower-ctx'
# shellcheck disable=SC2016  # backticks are literal text
ONE_SERVICE_DESCRIPTION='Flower SuperLink or SuperNode. Every CONTEXT variable is validated and
applied by flower-ctx (TLS, WireGuard, keepalive, systemd units, OneGate readiness).
Run `flower-ctx status` and `flower-ctx doctor` on the VM.'
ONE_SERVICE_RECOMMENDED_VM_CPU=2
ONE_SERVICE_RECOMMENDED_VM_MEMORY=2048
# configure and bootstrap re-run at every boot and context change: flower-ctx is idempotent.
ONE_SERVICE_RECONFIGURABLE=true

FLOWER_CTX_ROOT="${FLOWER_CTX_ROOT:-}"
FLOWER_APPLIANCE_DIR="${FLOWER_APPLIANCE_DIR:-${FLOWER_CTX_ROOT}/etc/one-appliance/flower}"
ONE_SERVICE_REPORT="${ONE_SERVICE_REPORT:-/etc/one-appliance/config}"

# ONE_SERVICE_PARAMS (stride 4, help and docs only) is generated from flower-ctx's registry.
_flower_role_file="${FLOWER_APPLIANCE_DIR}/role"
if [ -z "${FLOWER_ROLE:-}" ] && [ -r "${_flower_role_file}" ]; then
    FLOWER_ROLE=$(tr -d '[:space:]' <"${_flower_role_file}")
    # one-apps exports every CONTEXT variable: the gateway's VM template says what this VM is.
    _flower_wanted="${FL_APPLIANCE_ROLE:-${ONEAPP_FL_APPLIANCE_ROLE:-}}"
    if [ "${FLOWER_ROLE}" = supernode ] && [ "${_flower_wanted}" = gateway ]; then
        FLOWER_ROLE=gateway
    fi
fi
FLOWER_ROLE="${FLOWER_ROLE:-}"
if [ -n "${FLOWER_ROLE}" ] && [ -r "${FLOWER_APPLIANCE_DIR}/params-${FLOWER_ROLE}.sh" ]; then
    # shellcheck source=/dev/null
    . "${FLOWER_APPLIANCE_DIR}/params-${FLOWER_ROLE}.sh"
fi

# --- helpers ---------------------------------------------------------------------------------

_flower_say() {
    echo "flower-appliance: $*"
}

_flower_ctx() {
    # The executable: explicit, the image's virtualenv, or PATH.
    if [ -n "${FLOWER_CTX:-}" ]; then
        echo "${FLOWER_CTX}"
    elif [ -x /opt/flower/venv/bin/flower-ctx ]; then
        echo /opt/flower/venv/bin/flower-ctx
    else
        command -v flower-ctx || echo flower-ctx
    fi
}

_flower_check_role() {
    case "${FLOWER_ROLE}" in
        superlink | supernode | gateway) return 0 ;;
    esac
    echo "flower-appliance: no role: ${_flower_role_file} must hold superlink or supernode" >&2
    return 2
}

# The common arguments of configure and bootstrap: the role, environment overrides (one-apps
# exports every context variable), and the staging root when one is set.
_flower_args() {
    _flower_args_out=(--role "${FLOWER_ROLE}" --env)
    if [ -n "${FLOWER_CTX_ROOT}" ]; then
        _flower_args_out+=(--root "${FLOWER_CTX_ROOT}")
    fi
}

_flower_report_path() {
    echo "${FLOWER_CTX_ROOT}${ONE_SERVICE_REPORT}"
}

# Public facts for the operator, as "key=value" lines: from `flower-ctx status --json` when that
# works, else from the files configure wrote. Never a secret.
_flower_facts() {
    local ctx status_json root
    ctx=$(_flower_ctx)
    root="${FLOWER_CTX_ROOT:-/}"
    local -a args=(status --json)
    if [ -n "${FLOWER_CTX_ROOT}" ]; then
        args+=(--root "${FLOWER_CTX_ROOT}")
    fi
    # `status` may or may not take --role: try without, then with it.
    status_json=$("${ctx}" "${args[@]}" 2>/dev/null) \
        || status_json=$("${ctx}" "${args[@]}" --role "${FLOWER_ROLE}" 2>/dev/null) \
        || status_json=""
    FLOWER_STATUS_JSON="${status_json}" _flower_python - "${root}" "${FLOWER_ROLE}" <<'PY'
import base64, hashlib, json, os, re, subprocess, sys

root, role = sys.argv[1], sys.argv[2]
facts = {"role": role}

def find(doc, keys):
    """First value of any of keys, searching nested objects breadth-first."""
    queue = [doc]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for k in keys:
                if k in cur and isinstance(cur[k], (str, int, bool)) and cur[k] != "":
                    return cur[k]
            queue.extend(v for v in cur.values() if isinstance(v, (dict, list)))
        elif isinstance(cur, list):
            queue.extend(cur)
    return None

raw = os.environ.get("FLOWER_STATUS_JSON", "")
try:
    status = json.loads(raw) if raw.strip() else None
except ValueError:
    status = None
def dig(doc, *path):
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc if isinstance(doc, (str, int, bool)) and doc != "" else None

if isinstance(status, dict):
    facts["source"] = "flower-ctx status --json"
    for out, paths, flat in (
        ("endpoint", [("endpoint",)], ("endpoint", "fl_endpoint", "FL_ENDPOINT")),
        ("superlink", [("superlink_address",), ("superlink", "address")], ("superlink_address", "FL_SUPERLINK")),
        ("tls", [("tls", "enabled")], ("FL_TLS",)),
        ("ca_fingerprint", [("tls", "ca", "fingerprint")], ("ca_fingerprint", "FL_CA_FINGERPRINT")),
        ("wg_public_key", [("wireguard", "public_key")], ("wg_public_key", "FL_WG_PUBLIC_KEY")),
        ("running", [("service", "running")], ()),
        ("ready", [("onegate", "ready")], ("FL_READY",)),
    ):
        val = next((v for v in (dig(status, *p) for p in paths) if v is not None), None)
        if val is None and flat:
            val = find(status, flat)
        if val is not None:
            facts[out] = "YES" if val is True else "NO" if val is False else str(val)
else:
    facts["source"] = "files"

def under(path):
    return os.path.join(root, path.lstrip("/"))

if "ca_fingerprint" not in facts:
    try:
        pem = open(under("/opt/flower/certs/ca.crt"), "rb").read().decode("ascii")
        body = re.search(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
        if body:
            der = base64.b64decode("".join(body.group(1).split()))
            facts["ca_fingerprint"] = "sha256:" + hashlib.sha256(der).hexdigest()
    except (OSError, ValueError):
        pass
if "wg_public_key" not in facts:
    # The key file is read by wg itself on stdin: the private key never appears in argv.
    try:
        with open(under("/etc/wireguard/wg0.key"), "rb") as key:
            pub = subprocess.run(["wg", "pubkey"], stdin=key, capture_output=True, timeout=10)
        if pub.returncode == 0:
            facts["wg_public_key"] = pub.stdout.decode().strip()
    except (OSError, subprocess.SubprocessError):
        pass
try:
    with open(under(f"/opt/flower/config/{role}.json")) as fh:
        cfg = json.load(fh)
except (OSError, ValueError):
    cfg = {}
if "endpoint" not in facts and role == "superlink":
    # What OneGate publishes as FL_ENDPOINT: the primary NIC address and the Fleet API port.
    port = str(cfg.get("fleet_api_address") or "0.0.0.0:9092").rpartition(":")[2]
    if os.environ.get("ETH0_IP"):
        facts["endpoint"] = f"{os.environ['ETH0_IP']}:{port}"
if "superlink" not in facts and role == "supernode" and cfg.get("superlink_address"):
    facts["superlink"] = str(cfg["superlink_address"])
if "tls" not in facts and isinstance(cfg.get("tls"), dict):
    facts["tls"] = "YES" if cfg["tls"].get("enabled") else "NO"
for k, val in facts.items():
    print(f"{k}={val}")
PY
}

_flower_python() {
    # The image's virtualenv Python, else the system one.
    local ctx venv_python
    ctx=$(_flower_ctx)
    venv_python="$(dirname "${ctx}")/python3"
    if [ -x "${venv_python}" ]; then
        "${venv_python}" "$@"
    else
        python3 "$@"
    fi
}

# Write the one-apps report (mode 0600): what an operator needs to connect the other zones.
_flower_write_report() {
    local state="$1" report dir tmp facts line
    report=$(_flower_report_path)
    dir=$(dirname "${report}")
    mkdir -p "${dir}"
    facts=$(_flower_facts) || facts="role=${FLOWER_ROLE}"
    tmp=$(mktemp "${report}.tmp.XXXXXX")
    chmod 0600 "${tmp}"
    {
        echo "[Flower ${FLOWER_ROLE}]"
        echo "state = ${state}"
        # Split at the first '=' only: base64 values end with '=' (read -r would drop it).
        while IFS= read -r line; do
            [ -n "${line}" ] && printf '%s = %s\n' "${line%%=*}" "${line#*=}"
        done <<<"${facts}"
        echo
        echo "[Commands]"
        echo "status = flower-ctx status"
        echo "doctor = flower-ctx doctor"
        if [ "${FLOWER_ROLE}" = superlink ]; then
            echo "ca_export = flower-ctx ca export   (paste into FL_SSL_CA_CERTFILE of the training sites)"
        fi
        if [ "${FLOWER_ROLE}" = gateway ]; then
            echo "hub_peer = flower-ctx wg peer   (this gateway's [Peer] for the hub; add the zone's network to its AllowedIPs)"
        fi
    } >"${tmp}"
    mv -f "${tmp}" "${report}"
}

# --- one-apps lifecycle ----------------------------------------------------------------------

service_install() {
    _flower_check_role || return $?
    local ctx
    ctx=$(_flower_ctx)
    _flower_say "install: checking ${ctx} for ${FLOWER_ROLE}"
    "${ctx}" --version || return 1
    # Proves the registry loads in this image; the rows are what `service help` shows.
    "${ctx}" context reference --format one-apps --role "${FLOWER_ROLE}" >/dev/null || return 1
    _flower_say "install: done"
}

# Run `flower-ctx STEP` for this image's role; on failure write HINT to the report and return its
# exit code (one-apps then records <step>_failure and never reports READY=YES).
_flower_step() {
    local step="$1" hint="$2" ok_state="$3" ctx rc=0
    _flower_check_role || return $?
    ctx=$(_flower_ctx)
    _flower_args
    _flower_say "${step}: ${ctx} ${step} ${_flower_args_out[*]}"
    "${ctx}" "${step}" "${_flower_args_out[@]}" || rc=$?
    if [ "${rc}" -ne 0 ]; then
        _flower_write_report "${step} failed (exit ${rc}); ${hint}" || true
        return "${rc}"
    fi
    _flower_write_report "${ok_state}" || return 1
}

service_configure() {
    _flower_step configure "see /var/log/one-appliance/configure.log" "configured"
}

service_bootstrap() {
    # On failure flower-ctx has already published FL_READY=NO and FL_ERROR itself.
    _flower_step bootstrap "run flower-ctx doctor" "ready"
}

service_cleanup() {
    # Called by one-apps after every step, success or not: only removes this hook's leftovers.
    local report
    report=$(_flower_report_path)
    rm -f "${report}".tmp.* 2>/dev/null || true
    return 0
}

service_help() {
    local ctx
    ctx=$(_flower_ctx)
    cat <<EOF
Flower ${FLOWER_ROLE:-(role not set)} appliance, configured by flower-ctx at every boot.

CONTEXT variables (also accepted with the ONEAPP_ prefix), as OpenNebula user inputs:
EOF
    if [ -n "${FLOWER_ROLE}" ] && "${ctx}" context reference --format user-inputs --role "${FLOWER_ROLE}"; then
        :
    elif declare -F default_service_help >/dev/null; then
        default_service_help
    else
        echo "(flower-ctx not available: see docs/context-variables.md)"
    fi
    cat <<EOF

VM templates must set CONTEXT TOKEN=YES and REPORT_READY=YES. On the VM: flower-ctx status,
flower-ctx doctor, and the report in ${ONE_SERVICE_REPORT}.
EOF
}
