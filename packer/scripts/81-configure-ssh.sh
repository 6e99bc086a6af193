#!/usr/bin/env bash
# Put SSH hardening back after the build-time start script opened it (runs inside the build VM).
set -euo pipefail

conf=/etc/ssh/sshd_config
set_option() {
    local key="$1" value="$2"
    if grep -Eq "^[#[:space:]]*${key}[[:space:]]" "$conf"; then
        sed -i -E "s/^[#[:space:]]*${key}[[:space:]].*/${key} ${value}/" "$conf"
    else
        echo "${key} ${value}" >>"$conf"
    fi
}
set_option PasswordAuthentication no
set_option PermitRootLogin without-password
set_option UseDNS no
systemctl reload ssh 2>/dev/null || systemctl reload sshd 2>/dev/null || true
