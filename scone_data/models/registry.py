"""Registry of the official detector/segmenter checkpoints: URL, sha256, size, cache directory
(model directories such as the VLMs: models/snapshots.py, reached through the same functions).

Files live in ``$SCONE_DATA_CACHE`` (default ``~/.cache/scone-data/weights``) under their upstream
file names, or anywhere a stage's ``checkpoint`` setting points to (offline use). A checkpoint is
*usable* when it exists, has the registered size and hashes to the registered sha256; hashing a
2.5 GB file takes seconds, so a verified hash is remembered in a ``<file>.sha256`` side file keyed
by size and mtime. ``fetch`` downloads to a temporary name, checks the hash, then renames.

Sizes and hashes were taken from public records of the upstream files (several independent
download scripts agree on each); an entry whose hash is unknown has ``sha256=None`` and
``verify`` reports the computed hash instead of comparing.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ENV_CACHE = "SCONE_DATA_CACHE"
_CHUNK = 1 << 20  # 1 MiB reads: hashing speed is flat above this


class CheckpointError(RuntimeError):
    """A checkpoint is missing or corrupt; the message names the file and the command that fixes it."""


@dataclass(frozen=True)
class Checkpoint:
    name: str  # registry key, e.g. "sam_vit_h"
    family: str  # "sam" | "groundingdino"
    arch: str  # builder name inside the family: vit_b/vit_l/vit_h, swint_ogc/swinb
    filename: str
    url: str
    sha256: str | None
    size: int | None  # bytes
    mirrors: tuple[str, ...] = ()


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_GD_HF = "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/"
_GD_GH = "https://github.com/IDEA-Research/GroundingDINO/releases/download/"

CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            "sam_vit_b", "sam", "vit_b", "sam_vit_b_01ec64.pth", _SAM + "sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383,
        ),
        Checkpoint(
            "sam_vit_l", "sam", "vit_l", "sam_vit_l_0b3195.pth", _SAM + "sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607,
        ),
        Checkpoint(
            "sam_vit_h", "sam", "vit_h", "sam_vit_h_4b8939.pth", _SAM + "sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879,
        ),
        Checkpoint(
            "groundingdino_swint_ogc", "groundingdino", "swint_ogc", "groundingdino_swint_ogc.pth",
            _GD_HF + "groundingdino_swint_ogc.pth",
            "3b3ca2563c77c69f651d7bd133e97139c186df06231157a64c507099c52bc799", 693_997_677,
            mirrors=(_GD_GH + "v0.1.0-alpha/groundingdino_swint_ogc.pth",),
        ),
        Checkpoint(
            "groundingdino_swinb_cogcoor", "groundingdino", "swinb", "groundingdino_swinb_cogcoor.pth",
            _GD_HF + "groundingdino_swinb_cogcoor.pth",
            "46270f7a822e6906b655b729c90613e48929d0f2bb8b9b76fd10a856f3ac6ab7", 938_057_991,
            mirrors=(_GD_GH + "v0.1.0-alpha2/groundingdino_swinb_cogcoor.pth",),
        ),
    )
}  # fmt: skip


def for_model(family: str, arch: str) -> Checkpoint:
    """The registry entry of a model name as the stages spell it (``("sam", "vit_h")``)."""
    for c in CHECKPOINTS.values():
        if c.family == family and c.arch == arch:
            return c
    raise KeyError(f"no registered {family} checkpoint for {arch!r}")


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "scone-data" / "weights").expanduser()


def default_path(name: str) -> Path:
    """Where checkpoint ``name`` lives in the cache: a file, or a directory for a model snapshot."""
    if name not in CHECKPOINTS:
        from scone_data.models import snapshots

        return snapshots.default_path(name)
    return cache_dir() / CHECKPOINTS[name].filename


def names() -> list[str]:
    """Every registered name: single-file checkpoints, then model directories (models/snapshots.py)."""
    from scone_data.models import snapshots

    return [*CHECKPOINTS, *snapshots.SNAPSHOTS]


def digest(name: str, path: str | os.PathLike | None = None) -> str:
    """The sha256 that identifies ``name``'s weights at ``path`` (or in the cache): the file's own,
    or for a model directory :func:`scone_data.models.snapshots.digest`."""
    p = resolve(name, path)
    if name in CHECKPOINTS:
        return file_sha256(p)
    from scone_data.models import snapshots

    return snapshots.digest(p)


def resolve(name: str, path: str | os.PathLike | None = None) -> Path:
    """The file to load for checkpoint ``name``: the configured ``path`` if given, else the cache copy."""
    return Path(path).expanduser() if path else default_path(name)


def file_sha256(path: str | os.PathLike, use_cache: bool = True) -> str:
    """Hex sha256 of a file; remembered in ``<file>.sha256`` keyed by (size, mtime_ns)."""
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    side = path.with_name(path.name + ".sha256")
    if use_cache and side.exists():
        try:
            rec = json.loads(side.read_text())
            if {k: rec.get(k) for k in key} == key:
                return rec["sha256"]
        except (ValueError, KeyError, OSError):
            pass  # a damaged side file is just recomputed
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    if use_cache:
        try:
            side.write_text(json.dumps({**key, "sha256": digest}))
        except OSError:
            pass  # read-only weights directories are fine, just slower next time
    return digest


def problems(name: str, path: str | os.PathLike | None = None, check_hash: bool = True) -> list[str]:
    """Why checkpoint ``name`` at ``path`` (or in the cache) is not usable; [] when it is.

    ``check_hash=False`` (a stage's ``verify_sha256=False``) checks only that the file exists.
    A model directory's checks are :func:`scone_data.models.snapshots.problems`.
    """
    if name not in CHECKPOINTS:
        from scone_data.models import snapshots

        return snapshots.problems(name, path, check_hash)
    ck = CHECKPOINTS[name]
    p = resolve(name, path)
    fix = f"run `scone-data weights fetch {name}`" + (" or fix the configured path" if path else "")
    if not p.is_file():
        return [f"checkpoint {name}: file {p} does not exist; {fix}"]
    if not check_hash:
        return []  # a custom (e.g. fine-tuned) file: only its existence is checked
    size = p.stat().st_size
    if ck.size is not None and size != ck.size:
        return [
            f"checkpoint {name}: file {p} has {size} bytes, expected {ck.size} (partial or corrupt); {fix}"
        ]
    if ck.sha256 is not None:
        got = file_sha256(p)
        if got != ck.sha256:
            return [f"checkpoint {name}: file {p} has sha256 {got}, expected {ck.sha256}; {fix}"]
    return []


def require(name: str, path: str | os.PathLike | None = None, check_hash: bool = True) -> Path:
    """The verified path of checkpoint ``name``, or :class:`CheckpointError` saying how to fix it."""
    msgs = problems(name, path, check_hash)
    if msgs:
        raise CheckpointError("; ".join(msgs))
    return resolve(name, path)


def fetch(name: str, dest: str | os.PathLike | None = None, force: bool = False, log=print) -> Path:
    """Download checkpoint ``name`` into ``dest`` (default: the cache), verifying size and sha256.

    Tries the URL, then the mirrors. Writes ``<file>.part`` and renames only after the hash matched,
    so an interrupted download never leaves a file that looks complete. A model directory is
    fetched file by file (:func:`scone_data.models.snapshots.fetch`).
    """
    if name not in CHECKPOINTS:
        from scone_data.models import snapshots

        return snapshots.fetch(name, dest, force, log)
    ck = CHECKPOINTS[name]
    out = Path(dest).expanduser() / ck.filename if dest else default_path(name)
    if out.exists() and not force and not problems(name, out):
        log(f"{name}: already present and verified at {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    errors = []
    for url in (ck.url, *ck.mirrors):
        log(f"{name}: downloading {url}")
        try:
            h = hashlib.sha256()
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                while block := r.read(_CHUNK):
                    f.write(block)
                    h.update(block)
        except OSError as e:
            errors.append(f"{url}: {e}")
            continue
        got, size = h.hexdigest(), tmp.stat().st_size
        if (ck.sha256 and got != ck.sha256) or (ck.size and size != ck.size):
            errors.append(f"{url}: got {size} bytes sha256 {got}, expected {ck.size} bytes {ck.sha256}")
            tmp.unlink(missing_ok=True)
            continue
        os.replace(tmp, out)
        log(f"{name}: saved {out} ({size} bytes, sha256 {got})")
        return out
    tmp.unlink(missing_ok=True)
    raise CheckpointError(f"could not fetch {name}: " + "; ".join(errors))


# -- helpers shared by the model stages (detect, segment) -------------------------------------------
def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_request(num_gpus: str | float) -> float:
    """A stage's ``num_gpus`` on its own on this machine: "auto" -> 1.0 if CUDA is visible else 0.0.
    Under Ray a pipeline's ``auto`` stages share each GPU instead (``runtime.executor.gpu_requests``,
    which uses this only for explicit numbers)."""
    if num_gpus == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return float(num_gpus)


def model_setting_problems(family: str, model: str, known: tuple[str, ...], checkpoint: str | None,
                           device: str, num_gpus, verify_sha256: bool) -> list[str]:  # fmt: skip
    """Problems with the settings every model stage shares (messages name the field)."""
    out = []
    if model not in known:
        out.append(f"model: {model!r} is not one of {', '.join(known)}")
    elif model != "tiny":
        out += [
            f"checkpoint: {m}" for m in problems(for_model(family, model).name, checkpoint, verify_sha256)
        ]
    elif checkpoint is not None and not Path(checkpoint).is_file():
        out.append(f"checkpoint: file {checkpoint} does not exist")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        out.append(f"device: {device!r} is not auto, cpu, cuda or cuda:N")
    elif str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            out.append(f"device: {device!r} asked for but no CUDA device is visible")
    if num_gpus != "auto":
        try:
            if float(num_gpus) < 0:
                out.append(f"num_gpus: {num_gpus!r} is negative")
        except (TypeError, ValueError):
            out.append(f"num_gpus: {num_gpus!r} is neither 'auto' nor a number")
    return out


def weights_sha256(family: str, model: str, checkpoint: str | None) -> str | None:
    """The sha256 recorded in sample provenance: None for random-weight tiny models."""
    if model == "tiny" and checkpoint is None:
        return None
    if checkpoint is None:
        return for_model(family, model).sha256 or file_sha256(default_path(for_model(family, model).name))
    return file_sha256(checkpoint)
