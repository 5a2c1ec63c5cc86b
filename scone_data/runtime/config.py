"""Pipeline configuration: a YAML file, ``key=value`` overrides, and validation of every setting at once.

A pipeline file (``pipelines/*.yaml``) has these sections; each one is the constructor of a class:

  output:   directory of the run (bank/, shards/, ledger/, manifest.json, rejects.parquet)
  seed:     integer seed of the pair builder (the bank phase draws no random numbers)
  sources:  list of source settings, each with ``type`` (folder | parquet | coco | webdataset)
  steps:    the bank steps in order, each with ``type`` (decode | detect | grabcut | sam | subjects |
            any registered step) and its settings (see :mod:`.steps`; the old ``decode:``,
            ``detect:``, ``segment:``, ``subjects:`` sections are still read, as those steps)
  pairs:    PairConfig settings (the seed above is passed in)
  shards:   ShardSettings
  runtime:  RuntimeSettings (not part of any config hash: how a run executes never changes its bytes)

``load_config`` resolves the file and the overrides and raises :class:`ConfigError` listing every
problem before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from scone_data.runtime import overrides as O
from scone_data.runtime import storage
from scone_data.runtime.overrides import ConfigError

SECTIONS = ("output", "seed", "sources", "steps", "pairs", "shards", "runtime")
# what regen may not change (a step's own name, e.g. ``segment.iterations``, is one too)
BANK_SECTIONS = ("sources", "steps", "decode", "detect", "segment", "subjects")


@dataclass
class ShardSettings:
    samples_per_shard: int = (
        256  # ~25-60 MB per tar at 512-1024 px JPEGs: big enough to stream, small to retry
    )
    # the VLM verifier's settings (runtime/verify.py, ShardVerifier); null: samples are not verified
    verify: dict[str, Any] | None = None
    # the verifier built from ``verify`` by validate(); hashed in its place (its execution fields left
    # out), so a build without a verifier keeps the config hash it had before the setting existed
    verifier: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)
    hashed_apart: ClassVar[tuple[str, ...]] = ("verify",)

    def validate(self) -> list[str]:
        errs = [] if self.samples_per_shard >= 1 else ["shards.samples_per_shard: must be >= 1"]
        if self.verify is not None:
            from scone_data.runtime.verify import ShardVerifier

            self.verifier = build_dataclass(ShardVerifier, "shards.verify", self.verify, errs)
        return errs


@dataclass
class RuntimeSettings:
    executor: str = "ray"  # "ray" (embedded local instance unless ray_address) or "local" (in-process)
    ray_address: str | None = None
    unit_size: int = 16  # source images per work unit: the granularity of resume and of bank part files
    cpu_workers: int | None = None  # CPU actors; default: the CPUs Ray sees
    num_cpus: int | None = None  # CPUs of the embedded Ray instance; default: all
    # GPUs the embedded instance declares; default: those CUDA sees. Declaring GPUs on a CPU machine
    # (with the model stages on device=cpu) is how tests drive the separate GPU actor pools.
    num_gpus: int | None = None
    progress: bool = True

    def validate(self) -> list[str]:
        errs = []
        if self.executor not in ("ray", "local"):
            errs.append(f"runtime.executor: {self.executor!r} is not one of ray, local")
        if self.unit_size < 1:
            errs.append("runtime.unit_size: must be >= 1")
        if self.cpu_workers is not None and self.cpu_workers < 1:
            errs.append("runtime.cpu_workers: must be >= 1")
        return errs


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["pairs.seed=3", "runtime.executor=local"]`` -> nested dict (the parser ``scone-train`` uses too,
    see :mod:`.overrides`: values are YAML, a tag such as !!python/object is refused, not run)."""
    return O.nest(O.parse_overrides(items))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    data = O.read_yaml(path)  # duplicate keys and non-UTF-8 text refused; never executes code
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return data


def build_dataclass(cls, section: str, settings: dict[str, Any] | None, problems: list[str], **extra):
    """Instantiate ``cls(**settings)``, recording unknown keys, values of the wrong type (each field
    against its annotation) and constructor errors in ``problems``; None when the section is bad."""
    if settings is not None and not isinstance(settings, dict):
        problems.append(f"{section}: must be a mapping, got {settings!r}")
        return None
    settings, wrong = O.check_fields(cls, dict(settings or {}), section)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(settings) - names)
    for k in unknown:
        problems.append(f"{section}.{k}: unknown setting (known: {', '.join(sorted(names))})")
    problems.extend(wrong)
    if wrong:  # validate() compares values and would fail on the wrong types; those are reported
        return None
    try:
        obj = cls(**{k: v for k, v in settings.items() if k in names}, **extra)
    except (TypeError, ValueError) as e:
        problems.append(f"{section}: {e}")
        return None
    if hasattr(obj, "validate"):
        problems.extend(p if p.startswith(section) else f"{section}: {p}" for p in obj.validate())
    return obj


def settings_hash(*parts: Any) -> str:
    """16 hex over the *resolved* settings of configured objects (dataclasses: every init field, defaults
    included, with the class name) and plain values. Hashing the resolved objects rather than the YAML
    means a changed default in a new version also counts as changed settings. Fields a class lists in
    ``execution_fields`` (batch size, device, ...) change how a run executes, not what it writes, and
    are left out, so a run can resume on another machine; fields in ``hashed_apart`` are hashed by the
    caller in another form (``shards.verify`` as the verifier built from it)."""

    def plain(o: Any) -> Any:
        # into lists, tuples and mappings too: a pipeline's steps are a list of stages, each hashed by
        # its settings (a stage's repr would hold its execution fields: a new batch size stopped a resume)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            skip = set(getattr(o, "execution_fields", ())) | set(getattr(o, "hashed_apart", ()))
            skip |= {k for k in getattr(o, "omitted_when_none", ()) if getattr(o, k) is None}
            fs = {
                f.name: plain(getattr(o, f.name))
                for f in dataclasses.fields(o)
                if f.init and f.name not in skip
            }
            return {"__class__": type(o).__qualname__, **fs}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        return o

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, base: dict | None = None
) -> dict:
    """Read ``path`` (or start from ``base``), apply overrides, check the section names and types.

    The result always has ``steps``: a file in the old form (sections ``decode``, ``detect``,
    ``segment``, ``subjects``) is read as the steps it means, with a one-line note."""
    from scone_data.runtime import steps as S

    cfg = read_yaml(path) if path is not None else copy.deepcopy(base or {})
    problems: list[str] = []
    cfg = S.with_steps(cfg, parse_overrides(overrides or []), path, problems)
    problems += [f"{k}: unknown section (known: {', '.join(SECTIONS)})" for k in cfg if k not in SECTIONS]
    if not cfg.get("output"):
        problems.append("output: required (the run's directory)")
    for key, ann in (("output", str), ("seed", int)):
        if key in cfg and (key == "seed" or cfg[key] is not None):
            cfg[key], p = O.check_value(cfg[key], ann, key)
            problems += [p] if p else []
    srcs = cfg.get("sources")
    if not isinstance(srcs, list) or not srcs:
        problems.append("sources: a non-empty list of sources is required")
    else:
        # image ids (``<name>-<id>`` for COCO) and rejects are keyed by the name: two sources of
        # one name would pass as duplicates of each other and lose one's images
        names = [s.get("name") for s in srcs if isinstance(s, dict) and isinstance(s.get("name"), str)]
        for name in sorted({n for n in names if names.count(n) > 1}):
            at = [i for i, s in enumerate(srcs) if isinstance(s, dict) and s.get("name") == name]
            problems.append(f"sources: name {name!r} is used by sources {at}; names must be unique")
    for k in ("pairs", "shards", "runtime"):
        if cfg.get(k) is not None and not isinstance(cfg[k], dict):
            problems.append(f"{k}: must be a mapping or null")
    if problems:
        # list the wrong types of the sections checked here too, with these (build and regen check
        # every section with its class once the file itself is sound)
        from scone_data.pairs.config import PairConfig

        for name, cls in (("pairs", PairConfig), ("shards", ShardSettings), ("runtime", RuntimeSettings)):
            if isinstance(cfg.get(name), dict):
                problems += O.check_fields(cls, cfg[name], name)[1]
        raise ConfigError(problems)
    cfg.setdefault("seed", 0)
    # made absolute here, on the driver: Ray workers on other nodes run in the directory `ray start`
    # ran in, so a relative output would name another folder to them (``~`` is expanded too)
    if not storage.is_uri(cfg["output"]):  # an object-store URI (s3://...) is absolute already
        cfg["output"] = os.path.abspath(os.path.expanduser(cfg["output"].removeprefix(storage.FILE_SCHEME)))
    return cfg
