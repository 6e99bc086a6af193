#!/usr/bin/env bash
# Run the single install path for this image's role (FLOWER_ROLE, set by the service directory's
# .pkr.hcl) from the flower-ctx tree this script is part of (unpacked in the build VM by the
# preceding provisioner).
set -euo pipefail

: "${FLOWER_ROLE:?FLOWER_ROLE must be superlink or supernode}"
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bash "$src/packer/scripts/provision.sh" --role "$FLOWER_ROLE" --src "$src"
