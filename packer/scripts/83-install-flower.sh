#!/usr/bin/env bash
# Unpack the flower-ctx tree uploaded by Packer and run the single install path for this image's
# role (FLOWER_ROLE, set by the .pkr.hcl of the service directory).
set -euo pipefail

: "${FLOWER_ROLE:?FLOWER_ROLE must be superlink or supernode}"
src=/usr/local/src/flower-ctx
rm -rf "$src"
install -d -m 0755 "$src"
tar -C "$src" -xzf /tmp/flower-ctx.tar.gz
rm -f /tmp/flower-ctx.tar.gz
bash "$src/packer/scripts/provision.sh" --role "$FLOWER_ROLE" --src "$src"
