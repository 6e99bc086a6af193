"""What Flower apps need on the appliance: their Python dependencies.

``FL_APP_DEPENDENCIES`` pins packages that configure installs into the agent's virtualenv (the one
Flower runs from), so an app's dependencies arrive without rebuilding images in every zone;
``FL_RUNTIME_DEPENDENCY_INSTALL`` lets Flower install each run's own dependencies instead (see
``docs/operator-guide.md``, "Apps and their dependencies", for the trade-off).
"""

from __future__ import annotations

from .dependencies import apply, installed_versions, missing

__all__ = ["apply", "installed_versions", "missing"]
