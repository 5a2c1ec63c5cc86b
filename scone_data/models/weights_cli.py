"""``scone-data weights list|fetch|verify|path``: manage the checkpoint cache (see models/registry.py).

The lead's ``cli.py`` calls :func:`add_weights_parser` on its subparsers and dispatches to
:func:`run_weights`. ``--cache-dir`` overrides ``$SCONE_DATA_CACHE`` for one command.
"""

from __future__ import annotations

import argparse
import os

from scone_data.models import registry


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``weights`` command (with list/fetch/verify/path sub-commands) to ``subparsers``."""
    p = subparsers.add_parser("weights", help="list, download, verify or locate model checkpoints")
    p.add_argument("--cache-dir", default=None, help=f"weights directory (default ${registry.ENV_CACHE})")
    sub = p.add_subparsers(dest="weights_cmd", required=True)
    sub.add_parser("list", help="registered checkpoints and whether they are present")
    f = sub.add_parser("fetch", help="download checkpoints into the cache, verifying sha256")
    f.add_argument("names", nargs="*", help="checkpoint names (see `weights list`)")
    f.add_argument("--all", action="store_true", help="fetch every registered checkpoint")
    f.add_argument("--force", action="store_true", help="download even if a verified copy exists")
    v = sub.add_parser("verify", help="hash local files and compare with the registry")
    v.add_argument("names", nargs="*", help="checkpoint names (default: all present ones)")
    v.add_argument(
        "--path", default=None, help="verify this file or model directory instead of the cache copy"
    )
    pa = sub.add_parser("path", help="print where a checkpoint is (or would be) stored")
    pa.add_argument("name")
    p.set_defaults(func=run_weights)
    return p


def _unknown(names: list[str]) -> list[str]:
    return [n for n in names if n not in registry.names()]


def run_weights(args: argparse.Namespace) -> int:
    """Run one ``weights`` sub-command; returns the process exit code (0 ok, 1 problem, 2 usage)."""
    if getattr(args, "cache_dir", None):
        os.environ[registry.ENV_CACHE] = str(args.cache_dir)
    cmd = args.weights_cmd
    names = list(getattr(args, "names", None) or ([args.name] if getattr(args, "name", None) else []))
    bad = _unknown(names)
    if bad:
        print(f"unknown checkpoint(s): {', '.join(bad)}; known: {', '.join(registry.names())}")
        return 2
    if cmd == "list":
        print(f"cache: {registry.cache_dir()}")
        print(f"{'name':30} {'size':>14}  {'present':8} sha256")
        for ck in registry.CHECKPOINTS.values():
            here = registry.default_path(ck.name).is_file()
            print(f"{ck.name:30} {ck.size or '?':>14}  {'yes' if here else 'no':8} {ck.sha256 or 'unknown'}")
        from scone_data.models.snapshots import SNAPSHOTS

        for s in SNAPSHOTS.values():  # model directories: their files' hashes are not published
            here = registry.default_path(s.name).is_dir()
            print(f"{s.name:30} {'directory':>14}  {'yes' if here else 'no':8} {s.repo_id}@{s.revision}")
        return 0
    if cmd == "path":
        print(registry.default_path(names[0]))
        return 0
    if cmd == "fetch":
        if args.all:
            names = registry.names()
        if not names:
            print("name a checkpoint to fetch (or --all); see `scone-data weights list`")
            return 2
        rc = 0
        for n in names:
            try:
                registry.fetch(n, force=args.force)
            except registry.CheckpointError as e:
                print(e)
                rc = 1
        return rc
    if cmd == "verify":
        if args.path and len(names) != 1:
            print("--path needs exactly one checkpoint name")
            return 2
        if not names:
            names = [n for n in registry.names() if registry.default_path(n).exists()]
            if not names:
                print(f"no checkpoints in {registry.cache_dir()}; run `scone-data weights fetch NAME`")
                return 1
        rc = 0
        for n in names:
            p = registry.resolve(n, args.path)
            msgs = registry.problems(n, args.path)
            if msgs:
                print("FAIL " + msgs[0])
                rc = 1
                continue
            digest = registry.digest(n, args.path)
            known = registry.CHECKPOINTS[n].sha256 if n in registry.CHECKPOINTS else None
            print(f"ok   {n}: {p} sha256 {digest}" + ("" if known else " (no registered hash to compare)"))
        return rc
    raise AssertionError(f"unhandled weights command {cmd!r}")  # argparse restricts the choices
