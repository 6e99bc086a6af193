"""Site gateways: one WireGuard tunnel per zone, any number of SuperNodes behind it.

Two sides (docs/site-gateways.md):

- the **gateway role** (``flower-ctx configure --role gateway``): wg0 to the hub (or, in the
  coordinator zone, the hub itself), IPv4 forwarding always on, the TCP MSS of forwarded connections
  clamped to the route's MTU (its own nftables table, FL_FIREWALL), and a runtime record so
  ``status``/``doctor``/``bootstrap``/the watch know what the VM is. It runs no Flower. Its
  readiness: wg0 up, forwarding on, the tunnel's routes present and the SuperLink answering through it.
- **routes announced to the VMs behind it** (:mod:`.routes`, SuperNodes and, behind a hub gateway,
  the SuperLink): ``FL_GATEWAY_ROUTES`` via ``FL_GATEWAY_ADDRESS`` (or the gateway role's VM of the
  same OneFlow service, found through OneGate), tagged with flower-ctx's route protocol and
  reconciled like wg0's routes. No address translation: the SuperLink sees every SuperNode's own
  address, and forwarding holds no per-connection state, so a gateway restart breaks no connection.
"""

from __future__ import annotations

ROLE_NAME = "gateway"  # the OneFlow role name SuperNodes look up (and the flower-ctx role)
STATE = "gateway.json"  # agent record of the gateway address and routes in use (SuperNode/SuperLink)
