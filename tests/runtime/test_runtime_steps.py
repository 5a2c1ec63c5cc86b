"""Bank steps as a list: a new step is one class and one registry line; the old section form reads as
the same steps (same config hash); step problems are all listed before anything is created; the
transport's codecs come from the steps' own declarations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from scone_data import __version__
from scone_data.cli import main
from scone_data.imageio import encode_png
from scone_data.runtime import transport
from scone_data.runtime.build import build, make_stages, regen
from scone_data.runtime.config import ConfigError, load_config, settings_hash
from scone_data.shards.validate import validate_output
from scone_data.stages.base import STAGE_TYPES, Stage, register_stage


# -- the README's example: a new bank step is this class and its one registry line ---------------
@register_stage
@dataclass
class DropLabels(Stage):
    """Moves the subjects of the given labels to the rejects (say, no people in a corpus)."""

    type: ClassVar[str] = "drop_labels"
    needs: ClassVar[tuple[str, ...]] = ("subjects", "subject_rejects")
    adds: ClassVar[dict[str, str]] = {"subjects": "json", "subject_rejects": "json"}
    labels: list[str] = field(default_factory=list)

    def process(self, batch):
        for i, subjects in enumerate(batch["subjects"]):
            out = [s for s in subjects if s["label"] in self.labels]
            batch["subjects"][i] = [s for s in subjects if s["label"] not in self.labels]
            batch["subject_rejects"][i] = batch["subject_rejects"][i] + [
                {"label": s["label"], "reason": "dropped_label", "box_xyxy": s["box_xyxy"]} for s in out
            ]
        return batch


LABELS = ("cup", "ball", "lamp")
STEPS = [{"type": "decode", "min_side": 32}, {"type": "subjects"}]


def _toy(tmp_path, n: int = 6):
    """``n`` 160x120 PNGs of two filled ovals each (polygon annotations: no segmenter needed)."""
    tmp_path = tmp_path / "toy"
    tmp_path.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        img = np.clip(rng.normal(128, 20, (120, 160, 3)), 0, 255).astype(np.uint8)
        for j in range(2):
            cx, cy, t = 40 + 75 * j, 60, np.linspace(0, 2 * np.pi, 16, endpoint=False)
            pts = np.stack([cx + 22 * np.cos(t), cy + 30 * np.sin(t)], 1)
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], ((220, 40, 40), (40, 70, 220))[j])
            label = LABELS[(i + j) % len(LABELS)]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": LABELS.index(label) + 1,
                         "bbox": [cx - 22, cy - 30, 44, 60], "segmentation": [pts.ravel().tolist()],
                         "iscrowd": 0})  # fmt: skip
        (tmp_path / f"t{i}.png").write_bytes(encode_png(img))
        images.append({"id": i + 1, "file_name": f"t{i}.png", "width": 160, "height": 120})
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(LABELS)]
    (tmp_path / "coco.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )
    return tmp_path / "coco.json"


def _pipeline(tmp_path, steps, name="p.yaml", **extra) -> str:
    cfg = {
        "output": str(tmp_path / "out"),
        "sources": [{"type": "coco", "name": "toy", "annotations": str(_toy(tmp_path))}],
        "steps": steps,
        "pairs": {"ref_size": 64, "target_max_side": 128, "distractor_strategy": "random"},
        "shards": {"samples_per_shard": 4},
        "runtime": {"executor": "local", "unit_size": 2, "progress": False},
        **extra,
    }
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    return str(tmp_path / name)


def test_a_registered_step_runs_in_a_build(tmp_path):
    steps = [STEPS[0], {"type": "drop_labels", "labels": ["lamp"]}, STEPS[1]]
    cfg = load_config(_pipeline(tmp_path, steps))
    manifest = build(cfg)
    out = tmp_path / "out"
    assert validate_output(out) == []
    assert [s["type"] for s in manifest["config"]["steps"]] == ["decode", "drop_labels", "subjects"]
    labels = {s["label"] for s in pq.read_table(out / "bank/subjects").to_pylist()}
    assert labels == {"cup", "ball"}
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    dropped = [r for r in rejects if r["reason"] == "subject_dropped_label"]
    assert len(dropped) == 4 and {r["label"] for r in dropped} == {"lamp"}


def test_old_sections_are_the_same_steps_and_hash(tmp_path, repo_root, caplog):
    old = tmp_path / "old.yaml"
    text = (repo_root / "pipelines/demo.yaml").read_text()
    new = yaml.safe_load(text)
    sections = {"decode": {"max_pixels": 40000000}, "detect": None, "segment": {"type": "grabcut", "iterations": 4},
                "subjects": {"min_area_frac": 0.001, "max_border_sides": 3}}  # fmt: skip
    old.write_text(yaml.safe_dump({**{k: v for k, v in new.items() if k != "steps"}, **sections}))

    def bank_hash(path, *over):
        cfg = load_config(path, list(over))
        stages = make_stages(cfg, problems := [])
        assert problems == []
        return cfg["steps"], settings_hash(__version__, stages)

    with caplog.at_level("WARNING", logger="scone_data"):
        old_steps, h = bank_hash(old)
    assert [r.getMessage() for r in caplog.records] == [
        f"{old}: old form (decode, detect, segment, subjects sections), read as steps "
        "[decode, grabcut, subjects]; README: Bank steps"
    ]
    assert (old_steps, h) == bank_hash(repo_root / "pipelines/demo.yaml")
    assert old_steps == new["steps"]
    # an override names a step by its stage name or its type, in either form
    tweak = bank_hash(old, "segment.iterations=2")
    assert tweak == bank_hash(repo_root / "pipelines/demo.yaml", "grabcut.iterations=2")
    assert tweak[1] != h
    assert [s["type"] for s in bank_hash(old, "segment=null")[0]] == ["decode", "subjects"]
    assert load_config(old, ["segment.type=sam"])["steps"][1] == {"type": "sam", "iterations": 4}
    with pytest.raises(ConfigError, match="segment.type: 'decode' is not one of grabcut, sam"):
        load_config(old, ["segment.type=decode"])
    assert bank_hash(repo_root / "pipelines/demo.yaml", "segment=null", "detect=null")[0] == [
        new["steps"][0],
        new["steps"][2],
    ]


def test_every_step_problem_is_listed_before_anything_is_created(tmp_path, capsys):
    steps = [
        {"type": "grabcut", "iterations": "x"},  # before decode: no image yet; a wrong type
        {"type": "decode", "max_pixles": 5},  # a misspelt setting
        {"type": "drop_labels", "labels": ["lamp"]},
    ]  # and no subjects step
    p = _pipeline(tmp_path, steps)
    capsys.readouterr()
    assert main(["build", p, "runtime.executor=local"]) == 2
    err = capsys.readouterr().err
    for text in (
        "segment.iterations: must be an integer, got 'x'",
        "segment: reads image, subjects, which no step before it adds (image: added by decode; "
        "subjects: added by",
        "decode.max_pixles: unknown setting",
        "steps: a subjects step is required",
    ):
        assert text in err, err
    assert not (tmp_path / "out").exists()
    # an unknown type, a step that is no mapping, an override that names no step, old beside new
    with pytest.raises(ConfigError) as e:
        build(load_config(_pipeline(tmp_path, [*STEPS, {"type": "sharpen"}, 3])))
    assert "steps[2].type: 'sharpen' is not a step type (known: " in str(e.value)
    assert "steps[3]: must be a mapping with a type, got 3" in str(e.value)
    with pytest.raises(ConfigError, match=r"detect: unknown section .* not a step of this pipeline"):
        load_config(_pipeline(tmp_path, STEPS), ["detect.model=tiny"])
    with pytest.raises(ConfigError, match="segment: an old-form section beside steps"):
        load_config(_pipeline(tmp_path, STEPS, segment={"type": "grabcut"}))
    assert not (tmp_path / "out").exists()


def test_regen_refuses_a_step_setting(tmp_path):
    (tmp_path / "b/bank").mkdir(parents=True)
    cfg = {"output": "x", "seed": 0, "sources": [{"type": "folder", "root": "."}], "steps": STEPS}
    (tmp_path / "b/manifest.json").write_text(json.dumps({"config": cfg, "config_hash": "h"}))
    for over in ("segment.iterations=2", "grabcut.iterations=2", "subjects.min_area_frac=0.1"):
        with pytest.raises(ConfigError, match="a bank setting; regen only changes"):
            regen(tmp_path / "b", tmp_path / "r", [over])


def test_transport_codecs_come_from_the_steps():
    # the built-in steps declare exactly the hand list this replaces
    assert transport.codecs() == {"image": "array", "annotations": "json", "refs": "json",
                                  "subjects": "json", "subject_rejects": "json",
                                  "subject_tags": "json", "caption_provenance": "json",
                                  "generation": "json"}  # fmt: skip

    @dataclass
    class Tagger(Stage):
        type: ClassVar[str] = "test_tagger"
        adds: ClassVar[dict[str, str]] = {"tags": "json"}

    batch = {"tags": [["red", "round"], []], "caption": ["a", None]}
    try:
        register_stage(Tagger)
        wire = transport.encode(batch)
        assert transport.decode(wire) == batch
        # a worker that never imported the step passes its column on encoded; the driver decodes it
        del STAGE_TYPES["test_tagger"]
        relayed = transport.encode(transport.decode(wire))
        register_stage(Tagger)
        assert transport.decode(relayed) == batch
    finally:
        STAGE_TYPES.pop("test_tagger", None)

    @dataclass
    class Clash(Stage):
        type: ClassVar[str] = "test_clash"
        adds: ClassVar[dict[str, str]] = {"subjects": "array"}

    with pytest.raises(ValueError, match=r"Clash.adds\['subjects'\]: 'array', but .* says 'json'"):
        register_stage(Clash)

    @dataclass
    class Taken(Stage):
        type: ClassVar[str] = "decode"

    with pytest.raises(ValueError, match="stage type 'decode' is taken by scone_data.stages.decode"):
        register_stage(Taken)

    @dataclass
    class Forgot(Stage):
        type: str = "forgot"  # a setting, not a ClassVar: it would enter every config hash

    with pytest.raises(ValueError, match="type must be ClassVar"):
        register_stage(Forgot)
    assert "test_clash" not in STAGE_TYPES and "forgot" not in STAGE_TYPES


def test_a_steps_execution_settings_stay_out_of_the_bank_hash(repo_root):
    """The bank hash covers the steps list by each step's settings: batch size, device and GPU share
    change how a run executes, not what it writes, so a run resumes with others (a stage's repr, hashed
    before, held them); thresholds and only_added_by do change it."""

    def bank_hash(*over):
        cfg = load_config(repo_root / "pipelines/tiny_models.yaml", list(over))
        stages = make_stages(cfg, problems := [])
        assert problems == []
        return settings_hash(__version__, stages)

    h = bank_hash()
    assert bank_hash("detect.batch_size=7", "detect.num_gpus=0.5", "sam.batch_size=1") == h
    assert bank_hash("detect.box_threshold=0.06") != h
    assert bank_hash("subjects.only_added_by=null") == h
