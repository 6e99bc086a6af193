"""Who may join the federation: SuperNode keys and their admission on the SuperLink.

A SuperNode generates its key pair once, at its first configure, like its TLS key: the private key
never leaves the VM (0600, read by Flower as ``flower``); ``flower-ctx node key`` prints the
public key and it is published as ``FL_NODE_PUBLIC_KEY``. The SuperLink runs Flower's SuperNode
authentication and keeps its registrations matching what the operator admits (``reconcile``),
at configure, bootstrap and in the watch, without a restart.
"""

from __future__ import annotations

from .keys import NodeKeyError, PublicKey
from .step import AdmissionReport, ensure_node_key, node_public_key, reconcile

__all__ = ["AdmissionReport", "NodeKeyError", "PublicKey", "ensure_node_key", "node_public_key", "reconcile"]
