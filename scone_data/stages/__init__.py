"""Pipeline stages: plain callable classes run in-process or as Ray Data actor pools.

A pipeline's bank steps are named by type (``steps: [{type: decode}, {type: grabcut}, ...]``);
:func:`stage_types` is the one registry that resolves them. A step is one :class:`Stage` subclass
with ``type = "..."`` and one ``@register_stage`` line above it (see the README, "Adding a bank step").
"""

from __future__ import annotations

import importlib
import pkgutil

from scone_data.stages.base import OK, REJECTED, STAGE_TYPES, Stage, StageStats, register_stage

_loaded: list[bool] = []  # non-empty once every module of the package is imported


def stage_types() -> dict[str, type[Stage]]:
    """Every registered step type -> its class: the built-in steps of this package, and any other
    class registered by a module imported before the call.

    Each module of the package is imported here (once), not by importing the package: a source that
    needs only :mod:`.base` does not load OpenCV, and a new module in this folder needs no list."""
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _loaded.append(True)
    return STAGE_TYPES


__all__ = ["OK", "REJECTED", "Stage", "StageStats", "register_stage", "stage_types"]
