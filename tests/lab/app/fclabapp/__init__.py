"""A tiny numpy-only Flower app for the flower-ctx three-zone lab."""
