"""``scone-data``: build, regen, validate, stats, export, import, inspect, weights, doctor.

Exit codes: 0 done, 1 the output is invalid / the job failed, 2 bad settings (nothing was run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("scone_data")


def _summary(manifest: dict, out: str) -> str:
    from scone_data.shards.output import Output

    lines = [
        f"output: {out}",
        f"images {manifest['images']}  subjects {manifest['subjects']}  "
        f"samples {manifest['samples']}  shards {len(manifest['shards'])}",
        "",
        "samples per task:",
    ]
    keys = [*manifest["tasks"], *manifest["rejects"], *manifest["pair_rejects"]]
    w = max([len(k) for k in keys] + [4])  # one column for every table, as wide as its longest name
    lines += [f"  {k:<{w}}  {v:>7}" for k, v in manifest["tasks"].items()] or ["  (none)"]
    lines += ["samples per split:"] + [f"  {k:<{w}}  {v:>7}" for k, v in manifest["splits"].items()]
    if manifest["rejects"]:
        lines += ["rejected inputs, by reason:"] + [
            f"  {k:<{w}}  {v:>7}" for k, v in manifest["rejects"].items()
        ]
    if manifest["pair_rejects"]:
        lines += ["samples not made, by reason:"]
        lines += [f"  {k:<{w}}  {v:>7}" for k, v in manifest["pair_rejects"].items()]
    v = manifest.get("verify")
    if v:  # dropped samples are in the table above too, as verify:<reason>
        lines += [
            f"verifier {v['model']}, prompt {v['prompt']} {v['prompt_version']}, on_reject {v['on_reject']}:"
        ]
        rows = [("kept", v["kept"])] + [(f"flagged {k}", n) for k, n in v["flagged"].items()]
        rows += [(f"dropped {k}", n) for k, n in v["dropped"].items()]
        lines += [f"  {k:<{w}}  {n:>7}" for k, n in rows]
    for use, g in (manifest.get("generated") or {}).items():
        lines += [f"generated images ({use}), of {g['photos']} photos:"]
        lines += [f"  {k.replace('_', ' '):<{w}}  {g[k]:>7}" for k in ("kept", "rejected", "not_edited")]
    total = sum(s["bytes"] for s in manifest["shards"])
    lines.append(f"shard bytes: {total / 1e6:.1f} MB in {Output(out).shard_dir}")
    return "\n".join(lines)


def _done(command: str, manifest: dict, out: str) -> None:
    print(_summary(manifest, out))
    keys = ("images", "subjects", "samples", "tasks", "splits", "rejects", "pair_rejects")
    _emit_summary(
        command, ok=True, output=str(out), shards=len(manifest["shards"]), **{k: manifest[k] for k in keys}
    )


def cmd_build(args) -> int:
    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config

    over = list(args.overrides)
    if args.ray_address:
        over.append(f"runtime.ray_address={args.ray_address}")
    if args.executor:
        over.append(f"runtime.executor={args.executor}")
    if args.output:
        over.append(f"output={args.output}")
    cfg = load_config(args.config, over)
    # the old output is replaced only after every setting is checked, and deleted only once the new
    # one is complete (runtime/outdir.py)
    manifest = build(cfg, overwrite=args.overwrite, reads=(args.config,))
    _done("build", manifest, cfg["output"])
    return 0


def cmd_regen(args) -> int:
    from scone_data.runtime.build import regen

    over = list(args.overrides) + ([f"runtime.executor={args.executor}"] if args.executor else [])
    manifest = regen(args.bank, args.output, over, overwrite=args.overwrite)
    _done("regen", manifest, args.output)
    return 0


def cmd_validate(args) -> int:
    from scone_data.shards.output import Output
    from scone_data.shards.validate import validate_output

    problems = validate_output(args.output, decode_images=not args.no_decode)
    for p in problems:
        print(f"INVALID {p}")
    if problems:
        print(f"{len(problems)} problem(s) in {args.output}")
        _emit_summary("validate", ok=False, problems=problems)
        return 1
    m = Output(args.output).read_manifest(validate=False)  # just validated
    print(f"ok: {m['samples']} samples in {len(m['shards'])} shards, all checks passed")
    _emit_summary("validate", ok=True, samples=m["samples"], shards=len(m["shards"]))
    return 0


def _emit_summary(command: str, **fields) -> None:
    from scone_data.runtime import progress

    if progress.json_mode():
        progress.emit("summary", command=command, **fields)


def describe(err: BaseException) -> str:
    """``err`` as one line that names the file involved (pyarrow's FileNotFoundError holds only a path)."""
    from scone_data.shards.files import OutputWriteError  # its message already names the file

    if isinstance(err, OSError) and not isinstance(err, OutputWriteError):
        what = err.strerror or {FileNotFoundError: "no such file or directory"}.get(type(err), "")
        where = err.filename if err.filename is not None else (str(err) if not err.strerror else "")
        text = f"{where}: {what}" if where and what else where or what or type(err).__name__
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def _fail(command: str, err: Exception, code: int) -> int:
    from scone_data.runtime import progress

    if progress.json_mode():
        _emit_summary(command, ok=False, error=str(err))
    else:
        print(f"error: {describe(err) if isinstance(err, OSError) else err}", file=sys.stderr)
    return code


def load_manifest(output: str) -> dict:
    """The manifest of ``output``, checked against its schema; :class:`BadInput` when it is not one."""
    from scone_data.shards.output import ManifestError, Output

    try:
        return Output(output).read_manifest()
    except ManifestError as e:  # bad JSON, bad UTF-8, not the schema, or missing: one line naming it
        raise BadInput(str(e)) from None


class BadInput(Exception):
    """An input file is unusable (exit code 2, one line)."""


def cmd_stats(args) -> int:
    from scone_data.shards.output import Output

    if not Output(args.output).has_manifest():
        print(f"{args.output}: no manifest.json", file=sys.stderr)
        return 1
    manifest = load_manifest(args.output)
    print(json.dumps(manifest, indent=2) if args.json else _summary(manifest, args.output))
    return 0


JSON_COMMANDS = ("build", "regen", "validate")  # the interop commands run their own reporter
LOG_JSON_HELP = "JSON lines on stderr (start, progress, log, summary events) instead of bars and log text"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scone-data", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a subject bank and shards from a pipeline YAML")
    b.add_argument("config")
    b.add_argument("overrides", nargs="*", help="key=value settings, e.g. pairs.val_fraction=0.1")
    b.add_argument("--ray-address", help="attach to this Ray cluster instead of starting a local one")
    b.add_argument("--executor", choices=["ray", "local"], help="override runtime.executor")
    b.add_argument("--output", help="override output")
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT (an earlier output of ours) instead of resuming it",
    )
    b.add_argument("--log-json", action="store_true", help=LOG_JSON_HELP)
    b.set_defaults(fn=cmd_build)
    r = sub.add_parser("regen", help="new shards from an existing subject bank (no model runs)")
    r.add_argument("bank", help="output directory of an earlier build")
    r.add_argument("output", help="new output directory")
    r.add_argument("overrides", nargs="*", help="key=value settings of pairs.*, shards.*, seed, runtime.*")
    r.add_argument("--executor", choices=["ray", "local"])
    r.add_argument("--overwrite", action="store_true", help="replace OUTPUT (an earlier output of ours)")
    r.add_argument("--log-json", action="store_true", help=LOG_JSON_HELP)
    r.set_defaults(fn=cmd_regen)
    v = sub.add_parser("validate", help="check an output directory against its manifest and schemas")
    v.add_argument("output")
    v.add_argument("--no-decode", action="store_true", help="skip decoding every JPEG")
    v.add_argument("--log-json", action="store_true", help=LOG_JSON_HELP)
    v.set_defaults(fn=cmd_validate)
    s = sub.add_parser("stats", help="print an output's counts")
    s.add_argument("output")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_stats)
    from scone_data.pairs.audit import add_audit_parser

    add_audit_parser(sub)  # audit: every sample judged as a person reads it
    from scone_data.interop.cli import add_interop_parsers

    add_interop_parsers(sub)  # export, import, inspect
    from scone_data.runtime.doctor import add_doctor_parser

    add_doctor_parser(sub)
    try:
        from scone_data.models.weights_cli import add_weights_parser, run_weights
    except ImportError:  # the model stages are optional for annotation-only builds
        pass
    else:
        w = add_weights_parser(sub)
        w.set_defaults(fn=run_weights)
    return ap


def main(argv: list[str] | None = None) -> int:
    from scone_data.runtime import progress
    from scone_data.runtime.config import ConfigError
    from scone_data.runtime.outdir import OutputError
    from scone_data.runtime.progress import setup_logging
    from scone_data.shards.ledger import SettingsChanged

    args = parser().parse_args(argv)
    log_json = bool(getattr(args, "log_json", False)) and args.cmd in JSON_COMMANDS
    progress.configure(log_json)
    setup_logging(args.verbose, log_json)
    if log_json:
        progress.emit("start", command=args.cmd, argv=list(argv if argv is not None else sys.argv[1:]))
    try:
        return args.fn(args)
    except (ConfigError, SettingsChanged, OutputError, BadInput) as e:
        return _fail(args.cmd, e, 2)
    except OSError as e:  # disk full, read-only output, ...: one line, no traceback
        return _fail(args.cmd, e, 1)
    finally:
        progress.configure(False)


if __name__ == "__main__":
    sys.exit(main())
