"""The run ledger: one completion marker per finished unit of work (datatrove-style).

A unit's outputs are first published under their final names (atomically, see ``files``), and
only then is its marker written. On a rerun, units with a marker are skipped and all others are
redone from scratch, overwriting whatever a killed attempt left, so nothing is lost or duplicated.
Each marker stores the hash of the settings that produced it: resuming with other settings is an
error instead of a silently mixed output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scone_data.shards.files import write_json


class SettingsChanged(RuntimeError):
    pass


class Ledger:
    def __init__(self, root: str | Path, phase: str, config_hash: str):
        self.dir = Path(root) / "ledger" / phase
        self.config_hash = config_hash

    def _marker(self, unit: str) -> Path:
        return self.dir / f"{unit}.done"

    def done(self, unit: str) -> dict[str, Any] | None:
        """The marker's payload if ``unit`` finished with these settings, else None."""
        p = self._marker(unit)
        if not p.exists():
            return None
        rec = json.loads(p.read_text())
        if rec.get("config_hash") != self.config_hash:
            raise SettingsChanged(
                f"{p} was written with other settings (config hash {rec.get('config_hash')} != {self.config_hash}); "
                "use a new output directory or pass --overwrite"
            )
        return rec

    def mark(self, unit: str, payload: dict[str, Any]) -> None:
        write_json(self._marker(unit), {"config_hash": self.config_hash, **payload})
