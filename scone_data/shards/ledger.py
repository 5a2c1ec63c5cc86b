"""The run ledger: one completion marker per finished unit of work (datatrove-style).

A unit's outputs are first published under their final names (atomically, see ``files``), and
only then is its marker written. On a rerun, units with a marker are skipped and all others are
redone from scratch, overwriting whatever a killed attempt left, so nothing is lost or duplicated.
Each marker stores the hash of the settings that produced it: resuming with other settings is an
error instead of a silently mixed output. Bank markers also record the identities (path, size,
mtime_ns) of the inputs their unit read, and a resume whose inputs changed is refused
(:mod:`scone_data.runtime.inputs`). A marker that cannot be read (torn by a broken disk,
edited by hand) counts as not done, with a warning: the unit is redone and its marker rewritten.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from scone_data.runtime import storage
from scone_data.shards.files import write_json

log = logging.getLogger("scone_data")


class SettingsChanged(RuntimeError):
    pass


class Ledger:
    def __init__(self, root: str | Path, phase: str, config_hash: str):
        self.dir = storage.path(root) / "ledger" / phase
        self.config_hash = config_hash

    def _marker(self, unit: str) -> Path:
        return self.dir / f"{unit}.done"

    def done(self, unit: str) -> dict[str, Any] | None:
        """The marker's payload if ``unit`` finished with these settings, else None."""
        p = self._marker(unit)
        if not p.exists():
            return None
        try:
            rec = json.loads(p.read_bytes())
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            rec, why = None, f"{type(e).__name__}: {e}"
        else:
            why = "no config_hash in it"
        if not isinstance(rec, dict) or "config_hash" not in rec:
            log.warning("ledger marker %s is unreadable (%s): redoing %s", p, why, unit)
            return None
        if rec.get("config_hash") != self.config_hash:
            raise SettingsChanged(
                f"{p} was written with other settings (config hash {rec.get('config_hash')} != {self.config_hash}); "
                "use a new output directory or pass --overwrite"
            )
        return rec

    def mark(self, unit: str, payload: dict[str, Any]) -> None:
        write_json(self._marker(unit), {"config_hash": self.config_hash, **payload})
