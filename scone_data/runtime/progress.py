"""Progress bars, machine-readable events and logging set-up for the build commands.

People get tqdm bars on stderr. With ``--log-json`` (:func:`configure`) the bars and log lines
become JSON objects, one per line on stderr, each with an ``event``: ``start``, ``progress``
(``phase``, ``done``, ``total``; at most every :data:`PROGRESS_EVERY_S` seconds per phase, and once
when the phase ends), ``log`` (``level``, ``logger``, ``message``) and ``summary`` (``ok`` and the
counts, or ``error``). The interop commands emit the same events (``scone_data.interop.report``).
Under Ray, Ray's Python loggers are routed through the same formatter (warnings and up); its C++
core may still print a line or two at start-up that are not JSON, so a reader should skip lines
that do not start with ``{``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

PROGRESS_EVERY_S = 2.0  # a dashboard's refresh, not a flood of lines on a million-sample run
_json = False


def configure(log_json: bool) -> None:
    global _json
    _json = log_json


def json_mode() -> bool:
    return _json


def emit(event: str, **fields: Any) -> None:
    """One JSON event line on stderr."""
    rec = {"event": event, "time": round(time.time(), 3), **fields}
    print(json.dumps(rec, default=str, sort_keys=False), file=sys.stderr, flush=True)


class JsonBar:
    """tqdm's ``update``/``close`` (and ``with``) as rate-limited ``progress`` events: the first after
    :data:`PROGRESS_EVERY_S`, then at most one per interval, and always one at ``close``.
    ``sink``: where events go (this module's :func:`emit`, or an interop ``Reporter``'s)."""

    def __init__(
        self, total: int | None, desc: str, initial: int = 0, sink: Callable[..., None] | None = None
    ):
        self.total, self.desc, self.done = total, desc, initial
        self._emit = sink or emit
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self._last >= PROGRESS_EVERY_S:
            self._last = time.monotonic()
            self._emit("progress", phase=self.desc, done=self.done, total=self.total)

    def close(self) -> None:
        self._emit("progress", phase=self.desc, done=self.done, total=self.total)

    def __enter__(self) -> JsonBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, initial: int = 0, enabled: bool = True):
    """A progress bar: tqdm (shown on terminals when ``enabled``), or JSON events in --log-json mode."""
    if _json:
        return JsonBar(total, desc, initial)
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="it",
        disable=not enabled or None,  # None: tqdm hides itself when stderr is not a terminal
        file=sys.stderr,
        dynamic_ncols=True,
        leave=True,
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"event": "log", "time": round(record.created, 3), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})  # fmt: skip


def setup_logging(verbose: bool = False, log_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)


def route_ray_logs() -> None:
    """In --log-json mode, Ray's Python loggers (which bring their own stderr handlers) go through the
    JSON formatter too, warnings and errors only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    for name in ("ray", "ray.data"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.setLevel(logging.WARNING)
        lg.propagate = False
