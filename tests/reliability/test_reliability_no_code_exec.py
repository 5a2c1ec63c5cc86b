"""No code runs from data: checkpoints, configs and shards can't carry executable payloads.

- A pickle checkpoint whose ``__reduce__`` would create a file, given to SAM or Grounding DINO
  (directly, through the stage and through a build), is refused and the file never appears.
- YAML configs and ``key=value`` overrides with ``!!python/...`` tags are refused (safe_load).
- Shards hold only json and jpg members (webdataset's default decoders unpickle ``.pyd``/``.pickle``).
- A static check: no module under ``scone_data/`` calls pickle loads, ``torch.load`` without
  ``weights_only=True``, ``yaml.load`` without a safe loader, ``np.load(allow_pickle=True)``,
  ``eval`` or ``exec``.
"""

from __future__ import annotations

import ast
import builtins
import re
import tarfile
from pathlib import Path

import pytest
from test_reliability_support import make_toy_coco, toy_config

from scone_data.cli import main
from scone_data.runtime.build import build
from scone_data.runtime.config import ConfigError, load_config

PKG = Path(__file__).resolve().parents[2] / "scone_data"


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))  # unpickling this creates the marker file


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"weight": torch.zeros(1)}, "x": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def _refused(exc: BaseException) -> bool:
    import pickle

    from scone_data.models.registry import CheckpointError

    return isinstance(exc, (pickle.UnpicklingError, CheckpointError))


def test_malicious_checkpoint_is_refused_by_both_model_loaders(tmp_path):
    from scone_data.models import grounding_dino, sam

    path, marker = _evil_checkpoint(tmp_path)
    # both families read checkpoints through one loader, models.common (building tiny DINO costs ~9 s)
    assert grounding_dino.load_state_dict is sam.load_state_dict
    for load in (
        lambda: sam.build_sam("tiny", checkpoint=path),
        lambda: grounding_dino.load_state_dict(path),
    ):
        with pytest.raises(Exception) as e:
            load()
        assert _refused(e.value), repr(e.value)[:300]
        assert not marker.exists(), "the checkpoint's pickle payload ran"


def test_malicious_checkpoint_through_the_stage_and_a_build(tmp_path):
    from scone_data.stages.segment import SamSegmenter

    path, marker = _evil_checkpoint(tmp_path)
    # a real model name: the registered size/sha256 refuse the file before it is opened
    problems = SamSegmenter(model="vit_b", checkpoint=str(path), device="cpu").validate()
    assert any("expected 375042383" in p for p in problems), problems
    with pytest.raises(Exception) as e:  # hash checks off: the loader itself must refuse it
        SamSegmenter(model="vit_b", checkpoint=str(path), verify_sha256=False, device="cpu").setup()
    assert _refused(e.value), repr(e.value)[:300]
    coco = make_toy_coco(tmp_path / "toy", n=2)
    cfg = toy_config(coco, tmp_path / "out", segment={"type": "sam", "model": "tiny", "checkpoint": str(path),
                                                       "device": "cpu", "num_gpus": 0})  # fmt: skip
    with pytest.raises(Exception) as e:
        build(cfg)
    assert _refused(e.value), repr(e.value)[:300]
    assert not marker.exists(), "the checkpoint's pickle payload ran"
    assert not list((tmp_path / "out").rglob("*.tar"))


YAML_PAYLOADS = [
    "!!python/object/apply:builtins.open ['{m}', 'w']",
    "!!python/object/new:builtins.open ['{m}', 'w']",
    "!!python/name:os.system",
]


@pytest.mark.parametrize("payload", YAML_PAYLOADS)
def test_yaml_python_tags_are_refused(tmp_path, payload):
    marker = tmp_path / "PWNED"
    bad = payload.format(m=marker)
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(
        f"output: {tmp_path / 'out'}\nseed: {bad}\nsources:\n  - type: folder\n    root: {tmp_path}\n"
    )
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(cfg)
    assert main(["build", str(cfg), "runtime.executor=local"]) == 2  # the CLI's settings-error code
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(None, [f"seed={bad}"], base={"output": "x", "sources": [{}]})
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_shards_hold_only_json_and_jpeg(tmp_path):
    coco = make_toy_coco(tmp_path / "toy", n=4)
    build(toy_config(coco, tmp_path / "out"))
    tars = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    assert tars
    member = re.compile(r"^[0-9a-f]{16}\.(json|ref\d+\.jpg|target\.jpg)$")
    for t in tars:
        with tarfile.open(t) as tf:
            bad = [m.name for m in tf.getmembers() if not (m.isfile() and member.match(m.name))]
        assert not bad, f"{t.name}: unexpected members {bad}"


# -- static check ------------------------------------------------------------------------------
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
# StrictLoader: scone_data.runtime.overrides' SafeLoader subclass (refuses duplicate keys); a test below
# checks that it stays one
_SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader", "StrictLoader"}


def test_strict_loader_is_a_safe_loader():
    import yaml

    from scone_data.runtime.overrides import StrictLoader

    assert issubclass(StrictLoader, yaml.SafeLoader)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def unsafe_calls(source: str) -> list[str]:
    """``line: what`` for each call that could run code from data."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLE_MODULES:
            found += [
                f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if "load" in a.name
            ]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        head, _, tail = name.rpartition(".")
        line = f"{node.lineno}: {name}"
        if head.split(".")[0] in _PICKLE_MODULES and ("load" in tail or tail == "Unpickler"):
            found.append(line)
        elif name == "torch.load":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(line + " without weights_only=True")
        elif head == "yaml" and tail in ("load", "load_all", "full_load", "full_load_all", "unsafe_load"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if (
                tail.startswith(("full", "unsafe"))
                or loader is None
                or _dotted(loader).split(".")[-1] not in _SAFE_LOADERS
            ):
                found.append(line + " without a safe loader")
        elif tail == "load" and head in ("np", "numpy"):
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(line + " with allow_pickle")
        elif name in ("eval", "exec"):
            found.append(line)
    return found


def test_the_static_check_catches_each_pattern():
    bad = """
import pickle, torch, yaml, numpy as np
from pickle import loads
pickle.load(f); pickle.loads(b); pickle.Unpickler(f).load()
torch.load(p); torch.load(p, weights_only=False)
yaml.load(s); yaml.load(s, Loader=yaml.Loader); yaml.unsafe_load(s); yaml.full_load(s)
np.load(p, allow_pickle=True); eval("1"); exec("x = 1")
"""
    assert len(unsafe_calls(bad)) == 13, unsafe_calls(bad)
    good = "torch.load(p, map_location='cpu', weights_only=True); yaml.safe_load(s); yaml.load(s, Loader=yaml.SafeLoader); np.load(p)"
    assert unsafe_calls(good) == []


def test_no_module_loads_code_from_data():
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 20
    found = [f"{p.relative_to(PKG.parent)}:{hit}" for p in files for hit in unsafe_calls(p.read_text())]
    assert not found, found
