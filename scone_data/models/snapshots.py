"""Registry entries that are model *directories* (Hugging Face repository snapshots), not one file.

A vision-language model is a config, a tokenizer, a processor and weight shards. An entry names the
repository, the revision and the files the loaders need; the weight shards are the ones its
``model.safetensors.index.json`` lists (so a registry entry does not hard-code shard counts). Files
live in ``$SCONE_DATA_CACHE/<repo id with / as -->`` or in any directory a stage's ``weights_dir``
names (offline use: copy a snapshot there).

Diffusion pipelines (the image-edit models: Qwen-Image-Edit, FLUX.1 Kontext) are snapshots too,
with ``layout="diffusers"``: ``model_index.json`` names the components, and each component folder
needs its config (``config.json``, ``scheduler_config.json``, ``tokenizer_config.json`` or
``preprocessor_config.json``) and, for a model, its weights (``diffusion_pytorch_model`` or
``model`` ``.safetensors``, or the shards its ``.safetensors.index.json`` lists).

Without published hashes (``sha256`` None, which is every entry here: none can be read offline and
none is invented) a snapshot is still checked before any work: every needed file is there, the
JSON files parse, and each safetensors shard is whole (its header parses and its size is the header's
size plus the last tensor's end), which catches truncated and overwritten files. Provenance records
:func:`digest`, a sha256 over the files' own sha256 (remembered in side files as for checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from scone_data.models import registry

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# What AutoProcessor / AutoModelForImageTextToText read; a snapshot without one of them cannot load.
REQUIRED = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json")
# Fetched when the repository has them (a 404 is fine); checked only for being valid when present.
OPTIONAL = ("generation_config.json", "chat_template.json", "chat_template.jinja", "vocab.json",
            "merges.txt", "special_tokens_map.json", "added_tokens.json",
            "video_preprocessor_config.json")  # fmt: skip


@dataclass(frozen=True)
class Snapshot:
    name: str  # registry key, e.g. "qwen2_5_vl_7b_instruct"
    family: str  # "vlm"
    arch: str  # the stage's model name, e.g. "qwen2_5_vl_7b"
    repo_id: str
    # "main": the commit ids cannot be read offline; pin one here (and in sha256) once fetched online
    revision: str
    sha256: tuple[tuple[str, str], ...] = ()  # (file, hex) pairs where published; empty: none known
    base_url: str | None = None  # None: https://huggingface.co/{repo_id}/resolve/{revision}/
    layout: str = "transformers"  # "transformers": one model's folder | "diffusers": a pipeline's folder

    @property
    def dirname(self) -> str:
        return self.repo_id.replace("/", "--")

    def url(self, file: str) -> str:
        return (self.base_url or f"https://huggingface.co/{self.repo_id}/resolve/{self.revision}/") + file


SNAPSHOTS: dict[str, Snapshot] = {
    s.name: s
    for s in (
        Snapshot("qwen2_5_vl_3b_instruct", "vlm", "qwen2_5_vl_3b", "Qwen/Qwen2.5-VL-3B-Instruct", "main"),
        Snapshot("qwen2_5_vl_7b_instruct", "vlm", "qwen2_5_vl_7b", "Qwen/Qwen2.5-VL-7B-Instruct", "main"),
        Snapshot("qwen3_vl_4b_instruct", "vlm", "qwen3_vl_4b", "Qwen/Qwen3-VL-4B-Instruct", "main"),
        Snapshot("qwen3_vl_8b_instruct", "vlm", "qwen3_vl_8b", "Qwen/Qwen3-VL-8B-Instruct", "main"),
        # Image-edit pipelines (diffusers folders). No sha256: none can be read offline and none is
        # invented; the revision is "main" until someone pins a commit fetched online. FLUX.1 Kontext
        # [dev] is gated (accept its licence on the hub): fetch fails without access, so download the
        # snapshot with an authorised client and point the stage's weights_dir at it.
        Snapshot(
            "qwen_image_edit", "edit", "qwen_image_edit", "Qwen/Qwen-Image-Edit", "main", layout="diffusers"
        ),
        Snapshot(
            "flux1_kontext_dev",
            "edit",
            "flux1_kontext_dev",
            "black-forest-labs/FLUX.1-Kontext-dev",
            "main",
            layout="diffusers",
        ),
    )
}


def for_model(family: str, arch: str) -> Snapshot:
    for s in SNAPSHOTS.values():
        if s.family == family and s.arch == arch:
            return s
    raise KeyError(f"no registered {family} snapshot for {arch!r}")


def default_path(name: str) -> Path:
    return registry.cache_dir() / SNAPSHOTS[name].dirname


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (truncated, overwritten), or None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return f"header length {n} exceeds the file's {size} bytes"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"not a safetensors file ({type(e).__name__})"
    if 8 + n + end != size:
        return f"has {size} bytes, its header says {8 + n + end} (truncated or corrupt)"
    return None


def weight_files(root: Path, index: str = INDEX) -> tuple[list[str], list[str]]:
    """(the weight files ``root`` needs, problems reading its index): the index's shards, else
    ``model.safetensors``."""
    idx = root / index
    if not idx.is_file():
        return [SINGLE], []
    try:
        shards = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        return [], [f"{index} is unreadable ({type(e).__name__})"]
    bad = [s for s in shards if not isinstance(s, str) or "/" in s or s.startswith(".")]
    return ([], [f"{index} names unsafe shard files {bad}"]) if bad else (shards, [])


# -- diffusers pipeline folders --------------------------------------------------------------------
PIPELINE_INDEX = "model_index.json"
# Fetched per component folder when the repository has them (a 404 is fine).
PIPELINE_OPTIONAL = ("tokenizer.json", "vocab.json", "merges.txt", "spiece.model", "special_tokens_map.json",
                     "added_tokens.json", "chat_template.jinja", "chat_template.json", "generation_config.json",
                     "video_preprocessor_config.json", "tokenizer_config.json", "preprocessor_config.json")  # fmt: skip


def component_config(cls: str) -> str:
    """The file a pipeline component of class ``cls`` cannot load without."""
    if cls.endswith("Scheduler"):
        return "scheduler_config.json"
    if "Tokenizer" in cls:
        return "tokenizer_config.json"
    if "Processor" in cls or "FeatureExtractor" in cls:
        return "preprocessor_config.json"
    return "config.json"


def pipeline_components(root: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """({component folder: (library, class)}, problems reading ``model_index.json``)."""
    try:
        index = json.loads((root / PIPELINE_INDEX).read_text())
        comps = {k: (v[0], v[1]) for k, v in index.items() if not k.startswith("_") and isinstance(v, list)
                 and len(v) == 2 and v[0] and v[1]}  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        return {}, [f"{PIPELINE_INDEX} is unreadable ({type(e).__name__})"]
    bad = [k for k in comps if "/" in k or k.startswith(".")]
    return ({}, [f"{PIPELINE_INDEX} names unsafe folders {bad}"]) if bad else (comps, [])


def pipeline_files(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(the files a pipeline folder needs, their safetensors among them, problems), relative to ``root``.
    A model component's weights are ``<base>.safetensors`` or the shards ``<base>.safetensors.index.json``
    lists (base: ``diffusion_pytorch_model`` for diffusers models, ``model`` for transformers ones)."""
    comps, out = pipeline_components(root)
    files, weights = [PIPELINE_INDEX], []
    for name, (lib, cls) in comps.items():
        cfg = component_config(cls)
        files.append(f"{name}/{cfg}")
        if cfg != "config.json":
            continue
        base = "diffusion_pytorch_model" if lib == "diffusers" else "model"
        if (root / name / f"{base}.safetensors.index.json").is_file():
            shards, msgs = weight_files(root / name, f"{base}.safetensors.index.json")
            out += [f"{name}/{m}" for m in msgs]
            files.append(f"{name}/{base}.safetensors.index.json")
            weights += [f"{name}/{s}" for s in shards]
        else:
            weights.append(f"{name}/{base}.safetensors")
    return files + weights, weights, out


def pipeline_dir_problems(root: Path, known: dict[str, str] | None, check_hash: bool) -> list[str]:
    """:func:`dir_problems` of a diffusers pipeline folder."""
    if not (root / PIPELINE_INDEX).is_file():
        return [f"file {root / PIPELINE_INDEX} is missing"]
    files, weights, msgs = pipeline_files(root)
    out = [f"file {root / PIPELINE_INDEX}: {m}" for m in msgs]
    out += [f"file {root / f} is missing" for f in files if not (root / f).is_file()]
    if out or not check_hash:
        return out
    return _content_problems(root, [f for f in files if f.endswith(".json")], weights, known)


def _content_problems(root: Path, jsons, weights, known: dict[str, str] | None) -> list[str]:
    """Problems inside files that exist: JSON that does not parse, a safetensors file whose header
    disagrees with its size, a registered sha256 that does not match."""
    out = []
    for f in jsons:
        try:
            json.loads((root / f).read_text())
        except (ValueError, OSError) as e:
            out.append(f"file {root / f} is not valid JSON ({type(e).__name__})")
    for f in weights:
        why = safetensors_problem(root / f)
        if why:
            out.append(f"file {root / f} {why}")
    for f, want in (known or {}).items():
        if (root / f).is_file() and (got := registry.file_sha256(root / f)) != want:
            out.append(f"file {root / f} has sha256 {got}, expected {want}")
    return out


def dir_problems(root: Path, known: dict[str, str] | None = None, check_hash: bool = True,
                 layout: str | None = None) -> list[str]:  # fmt: skip
    """Problems of the model directory ``root`` (file names relative to it); [] when it loads.

    ``check_hash=False`` checks only that the files exist; ``known``: registered sha256 per file;
    ``layout``: "transformers" | "diffusers" (None: diffusers when ``model_index.json`` is there)."""
    if not root.is_dir():
        return [f"directory {root} does not exist"]
    if layout == "diffusers" or (layout is None and (root / PIPELINE_INDEX).is_file()):
        return pipeline_dir_problems(root, known, check_hash)
    out = [f"file {root / f} is missing" for f in REQUIRED if not (root / f).is_file()]
    shards, msgs = weight_files(root)
    out += [f"file {root / INDEX}: {m}" for m in msgs]
    out += [f"file {root / s} is missing" for s in shards if not (root / s).is_file()]
    if out or not check_hash:
        return out
    jsons = (*REQUIRED, *(o for o in OPTIONAL if o.endswith(".json") and (root / o).is_file()))
    return _content_problems(root, jsons, shards, known)


def problems(name: str, path: str | os.PathLike | None = None, check_hash: bool = True) -> list[str]:
    """Why snapshot ``name`` at ``path`` (or in the cache) is not usable, with the fix; [] when it is."""
    root = Path(path).expanduser() if path else default_path(name)
    fix = f"run `scone-data weights fetch {name}`" + (" or fix the configured weights_dir" if path else "")
    msgs = dir_problems(root, dict(SNAPSHOTS[name].sha256), check_hash, SNAPSHOTS[name].layout)
    return [f"weights {name}: {m}; {fix}" for m in msgs]


def digest(root: str | os.PathLike) -> str:
    """One sha256 for a model directory: over ``name sha256`` lines of its config, processor,
    tokenizer and weight files (the files that change what the model outputs)."""
    root = Path(root)
    if (root / PIPELINE_INDEX).is_file():  # a pipeline: every file of its component folders
        comps, _ = pipeline_components(root)
        names = sorted(
            [PIPELINE_INDEX]
            + [p.relative_to(root).as_posix() for c in comps if (root / c).is_dir()
               for p in (root / c).rglob("*") if p.is_file() and not p.name.endswith(".sha256")]
        )  # fmt: skip
        lines = "".join(f"{f} {registry.file_sha256(root / f)}\n" for f in names)
        return hashlib.sha256(lines.encode()).hexdigest()
    shards, _ = weight_files(root)
    names = sorted({*REQUIRED, *shards, *(f for f in OPTIONAL if (root / f).is_file())})
    lines = "".join(f"{f} {registry.file_sha256(root / f)}\n" for f in names if (root / f).is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f, registry._CHUNK)


def fetch(name: str, dest: str | os.PathLike | None = None, force: bool = False, log=print) -> Path:
    """Download snapshot ``name`` file by file into ``dest`` (default: the cache), then check it.

    Files land in ``<dir>.part`` and the directory is renamed only once it passes
    :func:`dir_problems` (so an interrupted download never looks complete); optional files the
    repository lacks (HTTP 404) are skipped."""
    snap = SNAPSHOTS[name]
    out = Path(dest).expanduser() / snap.dirname if dest else default_path(name)
    if out.exists() and not force and not problems(name, out):
        log(f"{name}: already present and checked at {out}")
        return out
    tmp = out.with_name(out.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if snap.layout == "diffusers":
            _fetch_pipeline(snap, tmp, log)
        for f in (*REQUIRED, *OPTIONAL, INDEX) if snap.layout != "diffusers" else ():
            try:
                _download(snap.url(f), tmp / f)
            except urllib.error.URLError as e:
                (tmp / f).unlink(missing_ok=True)
                # not there: a 404, or for file:// URLs (local mirrors, tests) a missing file
                absent = getattr(e, "code", None) == 404 or isinstance(e.reason, FileNotFoundError)
                if f in REQUIRED or not absent:
                    raise
        for s in weight_files(tmp)[0] if snap.layout != "diffusers" else ():
            log(f"{name}: downloading {snap.url(s)}")
            _download(snap.url(s), tmp / s)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise registry.CheckpointError(f"could not fetch {name} from {snap.url('')}: {e}") from None
    msgs = dir_problems(tmp, dict(snap.sha256), layout=snap.layout)
    if msgs:
        shutil.rmtree(tmp, ignore_errors=True)
        raise registry.CheckpointError(f"could not fetch {name}: " + "; ".join(msgs))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"{name}: saved {out} (digest {digest(out)})")
    return out


def _fetch_optional(snap: Snapshot, tmp: Path, f: str) -> None:
    """Download ``f`` if the repository has it (a 404, or a missing file of a file:// mirror, is fine)."""
    (tmp / f).parent.mkdir(parents=True, exist_ok=True)
    try:
        _download(snap.url(f), tmp / f)
    except urllib.error.URLError as e:
        (tmp / f).unlink(missing_ok=True)
        if not (getattr(e, "code", None) == 404 or isinstance(e.reason, FileNotFoundError)):
            raise


def _fetch_pipeline(snap: Snapshot, tmp: Path, log) -> None:
    """A diffusers pipeline: ``model_index.json``, each component's config, tokenizer/processor files
    and weight index, then the weights :func:`pipeline_files` asks for."""
    _download(snap.url(PIPELINE_INDEX), tmp / PIPELINE_INDEX)
    comps, msgs = pipeline_components(tmp)
    if msgs:
        raise registry.CheckpointError(f"could not fetch {snap.name}: " + "; ".join(msgs))
    for name, (lib, cls) in comps.items():
        cfg = component_config(cls)
        if cfg == "config.json":
            base = "diffusion_pytorch_model" if lib == "diffusers" else "model"
            extra: tuple[str, ...] = (
                "config.json",
                "generation_config.json",
                f"{base}.safetensors.index.json",
            )
        else:
            extra = (cfg, *PIPELINE_OPTIONAL)
        for f in dict.fromkeys(extra):
            _fetch_optional(snap, tmp, f"{name}/{f}")
    for f in pipeline_files(tmp)[1]:
        log(f"{snap.name}: downloading {snap.url(f)}")
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        _download(snap.url(f), tmp / f)
