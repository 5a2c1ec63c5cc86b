"""What a build reads, checked before it writes: outputs kept out of the sources, and bank units
keyed by the identity of their inputs.

**Outputs outside the sources.** A build whose output folder lies inside a folder a source reads
images from (a folder source's root, a COCO ``image_root``, the folder of a parquet file or tar, or
of a glob up to its first wildcard; :meth:`Source.input_folders`) is refused before anything is
created: a rerun would read its own bank, shards and rejects back as inputs.

**Content-addressed units.** The marker of bank unit ``N`` (``ledger/bank/unit-0000N.done``, named
by position like the part files ``part-0000N`` it vouches for) records, under ``inputs``, each of
the unit's refs with the identity of every file its row is made from (:meth:`Source.inputs`: path,
size and mtime in nanoseconds; for COCO the json too, since the annotations are inputs). A marker
counts as done only for those inputs. On a rerun :func:`check_resume` compares them with the
inputs as they are now, and refuses the run (:class:`InputsChanged`, exit 2, nothing written)
listing what changed when

- a done unit's inputs differ (a file replaced, removed or inserted before it, a json edited),
- a done unit, or a part file, belongs to a unit the inputs no longer make (inputs removed),
- the bank was complete (a shard marker or the manifest exists) and the inputs now make units it
  never had (inputs added after it was planned into shards), or
- a source's own inputs (the COCO json behind the source-level rejects) changed.

Inputs added while the bank phase was still running land in units not yet done and are simply
read: nothing already written depends on them. Markers written before this check existed carry no
``inputs`` and are trusted as before.

Why refuse rather than redo the changed units: samples are planned from the whole bank (distractors
come from other images, groups span units), so a changed unit changes shards already written, and
redoing it means deleting finished outputs nobody asked to delete. Refusing loses nothing: restore
the inputs, or rebuild with ``--overwrite`` (the old output is kept until the new one is complete).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from scone_data.bank.store import KINDS, PART_NAME
from scone_data.runtime import storage
from scone_data.runtime.config import ConfigError
from scone_data.runtime.outdir import OutputError
from scone_data.shards.output import Output

MAX_LISTED = 20  # lines of an InputsChanged message; the rest is counted
UNIT_NAME = "unit-{:05d}"
_UNIT_MARKER = re.compile(r"unit-(\d{5})\.done")


class InputsChanged(ConfigError):
    """The inputs of an output's done units are not the ones they were made from (exit 2)."""

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.args = (
            "the inputs changed since this output was started; resuming would mix old and new data "
            "(nothing was written):\n  - "
            + "\n  - ".join(problems)
            + "\nrestore the inputs, or rebuild from scratch with --overwrite (or into a new output folder)",
        )


def check_outside_sources(output: str | Path, sources: list) -> None:
    """Refuse (:class:`OutputError`, one line) an output inside a folder a source reads from."""
    out = storage.path(output).absolute().resolve()
    for src in sources:
        for folder in src.input_folders():
            f = storage.path(folder).resolve()
            if out == f or f in out.parents:
                raise OutputError(
                    f"output {output} lies inside {folder}, which {src.type} source {src.name!r} reads: "
                    "a rerun would read the output as its input; choose an output outside it"
                )


def unit_inputs(sources: list, units: list[tuple[int, list[tuple[int, str]]]]) -> dict[int, list]:
    """Unit id -> ``[[source index, ref, {path: identity}], ...]`` in the unit's order (json-ready)."""
    by_src: dict[int, list[str]] = {}
    for _, refs in units:
        for si, ref in refs:
            by_src.setdefault(si, []).append(ref)
    ids = {si: iter(sources[si].inputs(refs)) for si, refs in by_src.items()}  # one call per source
    return {uid: [[si, ref, next(ids[si])] for si, ref in refs] for uid, refs in units}


def check_resume(
    out: Path,
    ledger_dir: Path,
    done: dict[int, dict[str, Any] | None],
    inputs: dict[int, list],
    extra: list[str],
) -> None:
    """Raise :class:`InputsChanged` when the done units (``done``: marker payloads by unit id, None
    when not done) were made from other inputs than ``inputs`` (see the module docstring).
    ``extra``: problems found elsewhere (a source's own inputs), listed with the rest."""
    old = {u: rec["inputs"] for u, rec in done.items() if rec and "inputs" in rec}
    changed = sorted(u for u, recorded in old.items() if recorded != inputs[u])
    gone = _markers_beyond(ledger_dir, len(inputs))
    parts = [p for u, p in _parts_beyond(out, len(inputs)) if u not in gone]
    added: list[int] = []
    complete = _bank_was_complete(out)
    if complete:  # units without a marker file are new (a torn marker is only redone)
        added = [
            u for u in inputs if done[u] is None and not (ledger_dir / f"{UNIT_NAME.format(u)}.done").exists()
        ]
    if not (changed or gone or parts or added or extra):
        return
    for u, rec in gone.items():
        if rec and "inputs" in rec:
            old[u] = rec["inputs"]
    problems = list(extra)  # which units, then which files (the longer list, cut last)
    if changed:
        problems.append(f"units made from other inputs: {_names(changed)}")
    if gone:
        problems.append(f"done units the inputs no longer make: {_names(sorted(gone))}")
    problems += [f"{p}: written for a unit the inputs no longer make" for p in parts]
    if added:
        problems.append(f"units new since the bank was complete: {_names(added)}")
    problems += _file_lines(old, inputs, changed + sorted(gone) + added, complete)
    if len(problems) > MAX_LISTED:
        problems = problems[:MAX_LISTED] + [f"and {len(problems) - MAX_LISTED} more"]
    raise InputsChanged(problems)


def source_changed(name: str, recorded: dict[str, Any] | None, now: dict[str, str]) -> list[str]:
    """Lines for a source whose own inputs (``now``) differ from those its marker ``recorded``."""
    if not recorded or "inputs" not in recorded or recorded["inputs"] == now:
        return []
    return [f"{_change(p, recorded['inputs'].get(p), now.get(p))} (source {name!r})"
            for p in sorted(set(recorded["inputs"]) | set(now))
            if recorded["inputs"].get(p) != now.get(p)]  # fmt: skip


def _file_lines(old: dict[int, list], new: dict[int, list], units: list[int], complete: bool) -> list[str]:
    """One line per file behind the units' differences: changed, gone, or added. A file no done unit
    was made from is ``added`` only when the bank was complete (``complete``: every earlier input
    is then known); otherwise it may have been waiting in a unit not yet done, and the line says
    only which done unit now reads it."""
    old_all = {p: v for recs in old.values() for _, _, ids in recs for p, v in ids.items()}
    new_all = {p: v for recs in new.values() for _, _, ids in recs for p, v in ids.items()}
    lines: dict[str, str] = {}
    for u in units:
        for _, _, ids in old.get(u, []):
            for p, v in ids.items():
                if new_all.get(p) != v:
                    lines.setdefault(p, _change(p, v, new_all.get(p)))
        for _, _, ids in new.get(u, []):
            for p, v in ids.items():
                if p not in old_all:
                    now = f"{UNIT_NAME.format(u)} now reads {p}, which it was not made from"
                    lines.setdefault(p, _change(p, None, v) if complete else now)
    return [lines[p] for p in sorted(lines)]


def _change(path: str, was: str | None, now: str | None) -> str:
    if was is None:
        return f"added: {path}"
    if now is None:
        return f"gone: {path} (no longer among the inputs)"
    if now == "missing":
        return f"gone: {path} (the file no longer exists)"
    sizes = [v.split(":")[0] if ":" in v else v for v in (was, now)]
    what = f"size {sizes[0]} -> {sizes[1]} bytes" if sizes[0] != sizes[1] else "same size, modified"
    return f"changed: {path} ({what})"


def _names(units: list[int], shown: int = 5) -> str:
    names = ", ".join(UNIT_NAME.format(u) for u in units[:shown])
    return names + (f" and {len(units) - shown} more" if len(units) > shown else "")


def _markers_beyond(ledger_dir: Path, n_units: int) -> dict[int, dict[str, Any] | None]:
    """Done markers of units at or past ``n_units``, with their payloads (None: unreadable)."""
    import json

    out: dict[int, dict[str, Any] | None] = {}
    if not ledger_dir.is_dir():
        return out
    for p in ledger_dir.iterdir():
        m = _UNIT_MARKER.fullmatch(p.name)
        if m and int(m[1]) >= n_units:
            try:
                rec = json.loads(p.read_bytes())
            except (OSError, ValueError):
                rec = None
            out[int(m[1])] = rec if isinstance(rec, dict) else None
    return out


def _parts_beyond(out: Path, n_units: int) -> list[tuple[int, str]]:
    """``(unit id, path)`` of bank part files of units at or past ``n_units`` (a killed run's)."""
    found = []
    for kind in KINDS:
        d = out / "bank" / kind
        if d.is_dir():
            found += [(int(p.name[5:10]), f"bank/{kind}/{p.name}") for p in d.iterdir()
                      if PART_NAME.fullmatch(p.name) and int(p.name[5:10]) >= n_units]  # fmt: skip
    return sorted(found)


def _bank_was_complete(out: Path) -> bool:
    """The shard phase started (it only does once every unit is done) or the run finished."""
    output = Output(out)
    shards = output.ledger / "shards"
    return output.has_manifest() or (shards.is_dir() and any(shards.glob("*.done")))
