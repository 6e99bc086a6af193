#!/usr/bin/env bash
# Hand the appliance to one-context: net-90 runs `service configure && service bootstrap` at every
# boot; the one-apps net-99 replaces the context package's one and reports READY=YES only after
# bootstrap_success (flower-ctx has then already published READY itself).
set -euo pipefail

for hook in net-90-service-appliance net-99-report-ready; do
    mv -f "/etc/one-appliance/${hook}" "/etc/one-context.d/${hook}"
    chown root:root "/etc/one-context.d/${hook}"
    chmod u=rwx,go=rx "/etc/one-context.d/${hook}"
done
chmod u=rwx,go= /etc/one-appliance/service
