"""flower-ctx: the OpenNebula contextualization agent for Flower SuperLink and SuperNode VMs."""

__version__ = "0.2.0"
