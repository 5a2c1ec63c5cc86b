"""Progress, machine-readable events and the closing summary table of the interop commands.

Humans get tqdm bars on stderr and a summary table on stdout. With ``--log-json`` the bars are off and
stderr carries one JSON object per line instead, each with ``event`` and ``command``:

- ``{"event": "start", "command": "export", ...settings}``: once, before any work.
- ``{"event": "progress", "command": ..., "phase": "samples", "done": 40, "total": 120, "elapsed_s": 1.2}``:
  at most every :data:`PROGRESS_EVERY_S` seconds per phase, and always once when a phase ends.
- ``{"event": "warning", "command": ..., "message": "..."}``: when the command goes on despite a
  problem the user should know about (an export missing a task type with ``--allow-missing``).
- ``{"event": "summary", "command": ..., "ok": true, "elapsed_s": 3.4, ...counts}``: once, at the end
  (also on failure, with ``ok: false`` and ``error``).

The summary table still goes to stdout, so a script can read stderr as JSON lines and a person
can read stdout.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

# the same rate limit as the build commands' JSON progress events (one setting, one place)
from scone_data.runtime.progress import JsonBar, progress


class Reporter:
    """Events and progress of one command run. ``show_progress=False`` hides the bars only."""

    def __init__(
        self,
        command: str,
        log_json: bool = False,
        show_progress: bool = True,
        err: TextIO | None = None,
        out: TextIO | None = None,
    ):
        self.command = command
        self.log_json = log_json
        self.show_progress = show_progress
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.t0 = time.monotonic()

    def emit(self, event: str, **fields: Any) -> None:
        if not self.log_json:
            return
        obj = {"event": event, "command": self.command, "elapsed_s": round(time.monotonic() - self.t0, 3)}
        obj.update(fields)
        self.err.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
        self.err.flush()

    def start(self, **settings: Any) -> None:
        self.emit("start", **settings)

    def phase(self, total: int | None, desc: str):
        """One progress phase: rate-limited JSON lines (``--log-json``) or a tqdm bar."""
        if self.log_json:
            return JsonBar(total, desc, sink=self.emit)
        return progress(total or 0, desc, enabled=self.show_progress)

    def summary(self, title: str, counts: dict[str, Any], ok: bool = True) -> None:
        """Print ``counts`` as a two-column table on stdout and emit the ``summary`` event."""
        self.emit("summary", ok=ok, **counts)
        self.out.write(format_table(title, counts) + "\n")
        self.out.flush()

    def warn(self, message: str) -> None:
        """A warning: a ``warning`` event with ``--log-json``, else a ``warning: ...`` line on stderr."""
        if self.log_json:
            self.emit("warning", message=message)
        else:
            self.err.write(f"warning: {message}\n")
            self.err.flush()

    def fail(self, error: str) -> None:
        self.emit("summary", ok=False, error=error)


def format_table(title: str, counts: dict[str, Any]) -> str:
    """A plain two-column table; nested dicts become indented sub-rows."""
    rows: list[tuple[str, str]] = []
    for k, v in counts.items():
        if isinstance(v, dict):
            rows.append((k, "" if v else "(none)"))
            rows += [(f"  {kk}", _fmt(vv)) for kk, vv in v.items()]
        else:
            rows.append((k, _fmt(v)))
    w = max([len(k) for k, _ in rows] + [len(title)])
    wv = max([len(v) for _, v in rows] + [1])
    line = "-" * (w + wv + 2)
    return "\n".join([title, line] + [f"{k:<{w}}  {v:>{wv}}" for k, v in rows] + [line])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)
