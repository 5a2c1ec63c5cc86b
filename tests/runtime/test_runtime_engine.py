"""The engine pipelines: ``pipelines/tiny_engine.yaml`` built end to end (vlm_caption, insert, detect,
sam, subjects, insert_check, shards.verify) with the tiny random-weight models, in-process and on Ray;
``pipelines/scone_engine.yaml`` (the real models) checked for every setting but its weights.

The tiny detector finds noise, so insert_check rejects the generated images: the test reads the
reasons back from the bank's reject records and the manifest."""

import pytest
from tests_helpers import reader_files

from scone_data.bank.store import Bank
from scone_data.cli import main
from scone_data.runtime.build import build, make_shard_settings, make_sources, make_stages, regen
from scone_data.runtime.config import load_config
from scone_data.shards.output import Output

INSERT_REASONS = ("insert_count", "insert_side", "insert_no_original", "insert_parent_rejected")
REPOSE_REASONS = ("repose_count", "repose_unlike", "repose_no_original", "repose_parent_rejected")


def _cfg(repo_root, out, executor="local", extra=()):
    over = [f"output={out}", f"runtime.executor={executor}", "runtime.progress=false", "runtime.num_cpus=2"]
    return load_config(repo_root / "pipelines/tiny_engine.yaml", [*over, *extra])


@pytest.fixture(scope="module")
def local(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("engine_local")
    return out, build(_cfg(repo_root, out))


def test_generated_images_are_checked_and_every_outcome_recorded(local, capsys):
    out, manifest = local
    bank = Bank(out)
    photos = [r for r in bank.images.values() if r.get("generation") is None]
    rows = [r for r in bank.rejects() if not r["reason"].startswith("subject_")]  # row rejects
    for use, suffix, step, reasons in (("insertion", "#insert", "insert_check", INSERT_REASONS),
                                       ("repose", "#repose", "repose_check", REPOSE_REASONS)):  # fmt: skip
        kept = [r for r in bank.images.values() if (r.get("generation") or {}).get("use") == use]
        checked = [r for r in rows if r["stage"] == step]
        generated = {r["image_id"] for r in rows if r["uri"].endswith(suffix)}
        # every demo photo names a label and has subjects, so each got one generated mate of each
        # kind: kept, or a row reject
        assert len(photos) == 9 and len(kept) + len(generated) == 9, use
        assert checked and all(r["reason"] in reasons and r["detail"] for r in checked)
        for r in checked:
            assert r["uri"].endswith(suffix) and manifest["rejects"][r["reason"]] >= 1
        # the manifest's account of this use, recounted here from the bank
        assert manifest["generated"][use] == {"photos": 9, "kept": len(kept), "rejected": len(generated),
                                              "not_edited": 9 - len(kept) - len(generated)}  # fmt: skip
    for r in photos:  # the photo is in the group of its generated mate; never rejected by the check
        assert r["group_id"] == r["image_id"]
    print("kept", len(kept), "rejected", sorted((r["reason"], r["detail"]) for r in rows))
    # stats and the card carry the check's rejects and the verifier's decisions
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "insert_count" in text and "flagged unclear_answer" in text
    assert "generated images (repose), of 9 photos:" in text
    card = (out / "dataset_card.md").read_text()
    assert "## Verifier" in card and "flagged (written, keep false): unclear_answer" in card
    assert "## Generated images" in card and "| re-posed targets: rejected | 9 |" in card
    assert (
        manifest["verify"]["flagged"] == {"unclear_answer": manifest["samples"]} and manifest["samples"] > 0
    )
    assert main(["validate", str(out)]) == 0
    assert main(["audit", str(out), "--strict", "--json"]) == 0


def test_ray_and_in_process_give_the_same_bytes(local, tmp_path, repo_root):
    build(_cfg(repo_root, tmp_path, executor="ray"))
    a, b = reader_files(local[0]), reader_files(tmp_path)
    assert a.keys() == b.keys() and any(k.startswith("bank/images/") for k in a)
    assert any(k.endswith(".tar") for k in a)
    assert [k for k in a if a[k] != b[k]] == []
    assert (tmp_path / "dataset_card.md").read_bytes() == (local[0] / "dataset_card.md").read_bytes()
    ma, mb = Output(local[0]).read_manifest(), Output(tmp_path).read_manifest()
    differ = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
    print("manifest keys that differ:", differ)
    assert ma["rejects"] == mb["rejects"] and ma["samples"] == mb["samples"] and ma["verify"] == mb["verify"]


def test_regen_runs_no_edit_model(local, tmp_path, monkeypatch):
    from scone_data.stages.edit import ImageEdit

    def refuse(self):
        raise AssertionError("regen loaded the edit model")

    monkeypatch.setattr(ImageEdit, "setup", refuse)
    manifest = regen(
        local[0], tmp_path, ["runtime.executor=local", "runtime.progress=false", "shards.verify=null"]
    )
    assert manifest["images"] == local[1]["images"] and manifest["samples"] > 0


def test_a_reference_can_come_from_the_generated_mate(tmp_path, repo_root):
    """The planner's group references: targets are real photos only; with insert_check off (the tiny detector's noise fails it) and no
    colour-similarity floor (tiny masks are noise), a sample's target is a real photo and its reference
    shows the matching subject of that photo's edited copy."""
    extra = ["insert_check=null", "shards.verify=null", "pairs.group_min_similarity=0"]
    build(_cfg(repo_root, tmp_path, extra=extra))
    hits = []
    for rec, _ in Output(tmp_path).iter_samples(want_images=False):
        target = rec["target"]["image_id"]
        assert not target.endswith("-ins")  # a generated image is never a target
        for ref in rec["references"]:
            for c in ref["candidates"]:
                if c["intended"] and c["subject_id"].startswith(f"{target}-ins-"):
                    hits.append((rec["task"], target))
    assert any(task.startswith("distinction") for task, _ in hits), hits


def test_a_kept_re_posed_target_anchors_samples_referenced_from_its_photo(tmp_path, repo_root):
    """The whole re-posed path through a build: with one detection per generated image in the second
    pass and no colour floor (tiny masks are noise), repose_check keeps the re-posed targets; samples
    anchored on them render, pass the truth check and the audit, and every reference is cut from the
    real photo the target was made from."""
    cfg = _cfg(repo_root, tmp_path, extra=["shards.verify=null"])
    for st in cfg["steps"]:
        if st.get("only_added_by") == "repose" and st["type"] == "detect":
            st["max_detections"] = 1
        if st["type"] == "repose_check":
            st["min_similarity"] = 0.0
    build(cfg)
    images = Bank(tmp_path).images
    hits = 0
    for rec, _ in Output(tmp_path).iter_samples(want_images=False):
        target = rec["target"]["image_id"]
        if not target.endswith("-rep"):
            continue
        hits += 1
        gen = images[target]["generation"]
        assert gen["use"] == "repose" and "multi" not in rec["task"]
        (box,) = rec["target"]["boxes"]
        assert box["label"] == gen["label"]
        for ref in rec["references"]:
            (cand,) = [c for c in ref["candidates"] if c["intended"]]
            assert (
                cand["source_image_id"] == gen["parent_image_id"]
                and cand["subject_id"] == gen["parent_subject_id"]
            )
            assert all(c["source_image_id"] != target for c in ref["candidates"])
    assert hits >= 3
    g = Output(tmp_path).read_manifest()["generated"]["repose"]
    assert (
        g["kept"]
        == sum(1 for i in images.values() if (i.get("generation") or {}).get("use") == "repose")
        >= 3
    )
    assert g["photos"] == g["kept"] + g["rejected"] + g["not_edited"] == 9
    assert main(["validate", str(tmp_path)]) == 0
    assert main(["audit", str(tmp_path), "--strict", "--json"]) == 0


def test_photos_not_edited_are_counted(tmp_path, repo_root):
    """repose's default choice (a subject seen whole) finds none among the tiny detector's speckled
    masks: no photo is re-posed, and the manifest says so rather than leaving the step out."""
    cfg = _cfg(repo_root, tmp_path, extra=["shards.verify=null"])
    for st in cfg["steps"]:
        if st["type"] == "repose":
            for k in ("max_border_sides", "max_occluded", "max_part_share"):
                st.pop(k)
    build(cfg)
    m = Output(tmp_path).read_manifest()
    assert m["generated"]["repose"] == {"photos": 9, "kept": 0, "rejected": 0, "not_edited": 9}
    ins = m["generated"]["insertion"]
    assert ins["photos"] == 9 and ins["kept"] + ins["rejected"] + ins["not_edited"] == 9
    assert not any(i.endswith("-rep") for i in Bank(tmp_path).images)


def test_the_real_engine_pipeline_lacks_only_its_weights_and_photos(repo_root):
    cfg = load_config(repo_root / "pipelines/scone_engine.yaml")
    problems: list[str] = []
    make_sources(cfg, problems)
    stages = make_stages(cfg, problems)
    make_shard_settings(cfg, problems)
    assert [s.type for s in stages] == [
        "decode",
        "vlm_caption",
        "insert",
        "detect",
        "sam",
        "subjects",
        "insert_check",
        "repose",
        "detect",
        "sam",
        "subjects",
        "repose_check",
    ]
    assert [s.only_added_by for s in stages][-4:-1] == ["repose"] * 3
    env = [p for p in problems if "weights fetch" in p or "is not a folder" in p]
    assert [p for p in problems if p not in env] == []
    for name in ("qwen2_5_vl_7b_instruct", "qwen_image_edit", "groundingdino_swint_ogc", "sam_vit_h"):
        assert any(f"scone-data weights fetch {name}" in p for p in env), name
