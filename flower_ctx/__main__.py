"""``python -m flower_ctx`` is ``flower-ctx``."""

from .cli import main

main()
