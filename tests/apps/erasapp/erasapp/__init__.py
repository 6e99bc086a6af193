"""A minimal numpy-only Flower app for the era tests: FedAvg over one array (works on 1.39 and 1.42)."""
