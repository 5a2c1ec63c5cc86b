"""``scone-data doctor``: versions, weights with checksums, GPU, Ray, known incompatibilities with fixes."""

from __future__ import annotations

import argparse
import json

from scone_data.models import registry
from scone_data.runtime import doctor


def _run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    doctor.add_doctor_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["doctor", *argv])
    return args.fn(args)


def test_known_incompatibilities_each_come_with_the_fix():
    good = doctor.versions()
    assert good["torch"] and doctor.incompatibilities(good) == []  # this venv is pinned right
    bad = {**good, "transformers": "5.1.0", "groundingdino-py": "0.4.0", "torch": "2.13.0+cpu",
           "opencv-python": "5.0.1"}  # fmt: skip
    found = {c.name: c for c in doctor.incompatibilities(bad)}
    assert found["transformers/groundingdino-py"].status == "FAIL"
    assert "transformers==4.57.6" in found["transformers/groundingdino-py"].fix
    assert "torchvision==0.29.1" in found["torch/torchvision"].fix
    assert "<5" in found["opencv-python"].fix
    # transformers 5 alone (no groundingdino-py) is fine
    assert doctor.incompatibilities({**good, "transformers": "5.1.0", "groundingdino-py": None}) == []


def test_weights_present_corrupt_and_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path))
    (tmp_path / registry.CHECKPOINTS["sam_vit_b"].filename).write_bytes(b"not the real checkpoint")
    assert _run(["--json", "--no-gpu"]) == 1  # a corrupt checkpoint is a FAIL
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    vb = checks["weights sam_vit_b"]
    assert vb["status"] == "FAIL" and "expected 375042383" in vb["detail"]
    assert vb["fix"] == "scone-data weights fetch sam_vit_b --force"
    assert (
        checks["weights sam_vit_h"]["status"] == "warn"
        and "fetch sam_vit_h" in checks["weights sam_vit_h"]["fix"]
    )
    assert checks["torch"]["status"] == "ok" and checks["python"]["status"] == "ok"
    assert {"ray cluster", "HF_HUB_OFFLINE"} <= set(checks)


def test_weights_with_a_registered_hash_and_the_text_report(tmp_path, monkeypatch, capsys):
    """A checkpoint whose bytes match the registry is ok and its sha256 is printed."""
    data = b"tiny stand-in checkpoint"
    import hashlib

    ck = registry.CHECKPOINTS["sam_vit_b"]
    fake = registry.Checkpoint(ck.name, ck.family, ck.arch, ck.filename, ck.url,
                               hashlib.sha256(data).hexdigest(), len(data))  # fmt: skip
    monkeypatch.setitem(registry.CHECKPOINTS, "sam_vit_b", fake)
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path))
    (tmp_path / ck.filename).write_bytes(data)
    assert _run([]) == 0
    out = capsys.readouterr().out
    assert f"ok    weights sam_vit_b: {tmp_path / ck.filename} sha256 {fake.sha256}" in out
    assert "gpu:" in out and "problem(s)" in out
