"""The VLM step on the tiny random-weight Qwen2.5-VL preset (saved with save_pretrained, loaded back
from that directory): batched = one-item generate, captions, weights checks, sample verification."""

import io
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image
from tests_helpers import make_sample, weights_cli

from scone_data.models import registry, snapshots
from scone_data.models.vlm import save_tiny
from scone_data.stages import stage_types
from scone_data.stages.vlm import (
    VlmCaptioner,
    VlmVerifier,
    decide,
    load_prompt,
    parse_answer,
    parse_caption,
    sample_questions,
)

SMALL = dict(model="tiny", device="cpu", num_gpus=0, max_new_tokens=10, batch_size=3)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """arch -> a model directory of that tiny preset (made lazily, once per module)."""
    made = {}

    def get(arch):
        if arch not in made:
            made[arch] = str(save_tiny(tmp_path_factory.mktemp("vlm") / arch, seed=1, arch=arch))
        return made[arch]

    return get


@pytest.fixture(scope="module")
def tiny_dir(tiny_dirs):
    return tiny_dirs("qwen2_5_vl")


def _img(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


IMAGES = [_img(0, 60, 80), _img(1, 120, 90), _img(2, 40, 200)]  # three sizes: three prompt lengths


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_batched_generation_equals_the_librarys_one_item_generate(tiny_dirs, arch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    tiny_dir = tiny_dirs(arch)
    st = VlmCaptioner(weights_dir=tiny_dir, **SMALL)
    st.setup()
    q = st._prompt.text
    enc = st._gen.inputs([([im], q) for im in IMAGES])
    assert len(set(enc["attention_mask"].sum(1).tolist())) == 3  # one padded batch, padding varies
    assert (enc["attention_mask"][:, -1] == 1).all()  # padded on the left
    ours = st._gen.generate_ids([([im], q) for im in IMAGES], 10)
    assert st._gen.model.config.model_type == arch
    # the library's plain calls, one image each, on a fresh load of the same directory
    proc = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ref = []
    for im in IMAGES:
        one = proc(text=[text], images=[Image.fromarray(im)], return_tensors="pt")
        out = model.generate(**one, max_new_tokens=10, do_sample=False)
        ref.append(out[0, one["input_ids"].shape[1] :].tolist())
    assert ours == ref
    assert len({tuple(r) for r in ref}) == 3  # the images change the answers


def test_caption_fills_only_missing_captions_and_records_provenance(tiny_dir):
    st = VlmCaptioner(weights_dir=tiny_dir, max_tags=4, **SMALL)
    batch = {
        "image": [IMAGES[0], IMAGES[1], "not an image", IMAGES[2]],
        "caption": [None, "A dog.", None, "  "],
    }
    out = st(batch)
    assert out["status"] == ["ok", "ok", "rejected", "ok"] and out["reason"][2].startswith("bad_image")
    assert out["caption"][1] == "A dog." and out["caption_provenance"][1] is None
    assert out["subject_tags"][1] is None and out["caption"][2] is None
    raws = st._gen.generate([([IMAGES[i]], st._prompt.text) for i in (0, 2)], 10)
    for i, raw in zip((0, 3), raws):
        prov = out["caption_provenance"][i]
        assert prov["raw"] == raw  # the batch of two gave what a batch of these two gives
        assert (out["caption"][i], out["subject_tags"][i]) == parse_caption(raw, 4)
        assert prov["model"] == "vlm_tiny" and prov["weights_sha256"] == snapshots.digest(tiny_dir)
        assert prov["prompt"] == "vlm_caption" and prov["prompt_version"] == "v1"
        assert prov["prompt_sha256"] == load_prompt("vlm_caption", "v1").sha256[:16]
    assert st.stats.rejects["bad_image"] == 1
    assert VlmCaptioner(**SMALL)(batch)["caption_provenance"][0]["weights_sha256"] is None  # built in code


def test_parse_caption_and_answers():
    assert parse_caption("caption: A red mug  on a table.\ntags: Mug, table., mug, 3d!, a  dog", 3) == (
        "A red mug on a table.",
        ["mug", "table", "a dog"],
    )
    assert parse_caption("A cat.\x19\ufffd", 5) == ("A cat.", []) and parse_caption("\x19", 5) == (None, [])
    assert [parse_answer("present", a) for a in ("Yes.", "no, it is not", "maybe", "")] == [
        True,
        False,
        None,
        None,
    ]
    assert [parse_answer("count", a) for a in ("2", "There are three.", "none")] == [2, 3, None]


def test_missing_or_corrupt_weights_stop_before_work(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "cache"))
    text = "\n".join(VlmCaptioner(model="qwen2_5_vl_7b", device="cpu").validate())
    assert "does not exist" in text and "scone-data weights fetch qwen2_5_vl_7b_instruct" in text
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-64])  # a truncated download
    (msg,) = VlmCaptioner(model="qwen2_5_vl_3b", weights_dir=str(bad), device="cpu").validate()
    assert str(w) in msg and "truncated" in msg and "scone-data weights fetch qwen2_5_vl_3b_instruct" in msg
    st = VlmCaptioner(model="local", weights_dir=str(bad), device="cpu")
    with pytest.raises(registry.CheckpointError, match="model.safetensors"):
        st({"image": [IMAGES[0]], "caption": [None]})
    assert not st._ready and st.stats.rows_in == 0  # nothing ran
    (bad / "tokenizer.json").unlink()
    assert any("tokenizer.json is missing" in m for m in st.validate())
    problems: list[str] = []
    from scone_data.runtime.steps import make_stages

    make_stages(
        [{"type": "decode"}, {"type": "vlm_caption", "model": "qwen3_vl_8b"}, {"type": "subjects"}], problems
    )
    assert any("scone-data weights fetch qwen3_vl_8b_instruct" in p for p in problems)


def test_weights_cli_fetches_and_verifies_a_model_directory(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "cache"))
    toy = snapshots.Snapshot("toy_vlm", "vlm", "toy", "test/toy-vlm", "main", base_url=f"file://{tiny_dir}/")
    monkeypatch.setitem(snapshots.SNAPSHOTS, "toy_vlm", toy)
    assert weights_cli("list") == 0 and "Qwen/Qwen2.5-VL-7B-Instruct@main" in capsys.readouterr().out
    assert weights_cli("verify", "toy_vlm") == 1 and "weights fetch toy_vlm" in capsys.readouterr().out
    assert weights_cli("fetch", "toy_vlm") == 0
    out = registry.default_path("toy_vlm")
    assert out.name == "test--toy-vlm" and registry.problems("toy_vlm") == []
    assert weights_cli("verify", "toy_vlm") == 0 and snapshots.digest(tiny_dir) in capsys.readouterr().out
    assert not out.with_name(out.name + ".part").exists()


def _distinction_sample():
    rec, members = make_sample("s0", n_refs=1, task="distinction_single_intra")
    cands = rec["references"][0]["candidates"]
    cands.append({**cands[0], "subject_id": "img0-001", "intended": False})  # a second cup
    cands.append({**cands[0], "subject_id": "img0-002", "label": "cat", "intended": False})
    rec["references"][0]["expression"] = "the cup on the left"
    return rec, members


def test_verify_questions_decision_and_reason():
    rec, _ = _distinction_sample()
    qs = sample_questions(rec, load_prompt("vlm_verify", "v1"))
    assert [(q.kind, q.image, q.subject, q.expected) for q in qs] == [
        ("count", "target.jpg", "cup", 1),
        ("present", "target.jpg", "cat", False),
        ("unambiguous", "ref0.jpg", "the cup on the left", True),
    ]
    assert "cat" in qs[1].text and '"the cup on the left"' in qs[2].text
    assert decide(qs, ["1", "No.", "yes"]) == {**decide(qs, ["1", "No.", "yes"]), "keep": True, "reason": ""}
    res = decide(qs, ["one", "Yes, a cat.", "yes"])
    assert not res["keep"] and res["reason"] == "distractor_present: cat in target.jpg"
    assert [a["ok"] for a in res["answers"]] == [True, False, True]
    assert decide(qs, ["2", "no", "yes"])["reason"] == "count_mismatch: cup in target.jpg"
    assert decide(qs, ["1", "no", "hmm"])["reason"].startswith("unclear_answer: the cup on the left")
    with pytest.raises(ValueError):
        decide(qs, ["1"])  # every question needs its answer


def test_verifier_judges_rendered_samples_with_the_model(tiny_dir):
    samples = [_distinction_sample(), make_sample("s1", n_refs=2)]
    v = VlmVerifier(weights_dir=tiny_dir, **SMALL)
    res = v.verify_many(samples)
    assert [len(r["answers"]) for r in res] == [3, 3]  # s1: cup present, two references
    for r in res:
        assert isinstance(r["keep"], bool) and (r["keep"] or r["reason"])
        assert r["model"] == "vlm_tiny" and r["prompt_version"] == "v1" and r["prompt"] == "vlm_verify"
        assert all(isinstance(a["answer"], str) for a in r["answers"])
    # one sample at a time gives the same answers as the batch across samples
    assert v(*samples[1]) == res[1]
    q = res[0]["answers"][0]
    target = np.asarray(Image.open(io.BytesIO(samples[0][1]["target.jpg"])))
    assert q["answer"] == v._gen.generate([([target], q["question"])], 10)[0]


def test_registered_picklable_and_settings_checked():
    assert stage_types()["vlm_caption"] is VlmCaptioner
    st = VlmCaptioner(**SMALL)
    again = pickle.loads(pickle.dumps(st))
    assert again.settings() == st.settings() and not again._ready and again.resources()["num_gpus"] == 0.0
    text = "\n".join(
        VlmCaptioner(model="gpt", prompt_version="v9", batch_size=0, attention="x", device="tpu").validate()
    )
    for f in ("model:", "prompt_version:", "batch_size:", "attention:", "device:"):
        assert f in text
    assert "weights_dir" in VlmCaptioner(model="local").validate()[0]
    assert VlmCaptioner(**SMALL).validate() == []


def _coco(root):
    """Four 96x128 PNGs without captions, each with one annotated oval (no segmenter needed)."""
    import json

    import cv2

    from scone_data.imageio import encode_png

    root.mkdir()
    images, anns = [], []
    for i in range(4):
        img = _img(10 + i, 96, 128)
        pts = np.stack([64 + 30 * np.cos(t := np.linspace(0, 6.28, 16)), 48 + 25 * np.sin(t)], 1)
        cv2.fillPoly(img, [np.round(pts).astype(np.int32)], (200, 40, 40))
        (root / f"t{i}.png").write_bytes(encode_png(img))
        images.append({"id": i + 1, "file_name": f"t{i}.png", "width": 128, "height": 96})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1 + i % 2, "bbox": [34, 23, 60, 50],
                     "segmentation": [pts.ravel().tolist()], "iscrowd": 0})  # fmt: skip
    cats = [{"id": 1, "name": "cup"}, {"id": 2, "name": "ball"}]
    (root / "coco.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root / "coco.json"


def test_build_captions_the_bank_the_same_in_process_and_under_ray(tmp_path):
    """decode -> vlm_caption -> subjects on images without captions: the bank's images carry the
    captions, and under Ray (an actor pool) the bank is byte for byte the in-process one."""
    import pyarrow.parquet as pq
    import yaml
    from tests_helpers import reader_files

    from scone_data.runtime.build import build
    from scone_data.runtime.config import load_config
    from scone_data.shards.output import Output

    steps = [{"type": "decode", "min_side": 32},
             {"type": "vlm_caption", "model": "tiny", "seed": 1, "device": "cpu", "num_gpus": 0,
              "max_new_tokens": 12, "batch_size": 2},
             {"type": "subjects"}]  # fmt: skip
    ann = _coco(tmp_path / "toy")
    banks = {}
    for ex in ("local", "ray"):
        cfg = {"output": str(tmp_path / ex), "sources": [{"type": "coco", "name": "toy", "annotations": str(ann)}],
               "steps": steps, "pairs": {"ref_size": 64, "target_max_side": 128, "distractor_strategy": "random"},
               "runtime": {"executor": ex, "unit_size": 2, "progress": False, "num_cpus": 2}}  # fmt: skip
        (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
        manifest = build(load_config(tmp_path / "p.yaml"))
        banks[ex] = {k: v for k, v in reader_files(tmp_path / ex).items() if k.startswith("bank")}
    images = pq.read_table(tmp_path / "local/bank/images", columns=["uri", "caption"]).to_pylist()
    assert len(images) == 4 and all(isinstance(r["caption"], str) and r["caption"] for r in images)
    # each caption's provenance is kept with its image (the model, the prompt's version, the answer)
    from scone_data.bank.store import Bank

    for rec in Bank(tmp_path / "local").images.values():
        prov = rec["caption_provenance"]
        assert prov["model"] == "vlm_tiny" and prov["prompt_version"] == "v1" and prov["raw"]
        assert rec["subject_tags"] is None or all(isinstance(t, str) for t in rec["subject_tags"])
    assert {"name": "vlm_tiny", "weights_sha256": None} in manifest["config"]["models"]
    assert banks["ray"] == banks["local"] and banks["ray"]
    # the verifier judges the samples this build rendered, as they are stored
    samples = list(Output(tmp_path / "local").iter_samples())[:3]
    assert samples
    verdicts = VlmVerifier(model="tiny", seed=1, device="cpu", num_gpus=0, max_new_tokens=6).verify_many(
        samples
    )
    for (rec, _), v in zip(samples, verdicts):
        qs = sample_questions(rec, load_prompt("vlm_verify", "v1"))
        assert [a["question"] for a in v["answers"]] == [q.text for q in qs] and len(qs) >= 2
        assert v["keep"] == all(a["ok"] for a in v["answers"]) and (v["keep"] or v["reason"])
