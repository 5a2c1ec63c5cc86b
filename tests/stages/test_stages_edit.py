"""The image-edit step on the tiny random-weight FLUX.1 Kontext preset (saved with save_pretrained,
loaded back from that directory): batched = the library's one-item calls, seeds, provenance, weights
checks and the weights CLI on a diffusers pipeline folder."""

import io
import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image
from tests_helpers import weights_cli

from scone_data.imageio import encode_png
from scone_data.models import registry, snapshots
from scone_data.models.edit import TINY_CALL, save_tiny, to_uint8
from scone_data.stages.edit import ImageEdit

STEPS = 2
SMALL = dict(model="tiny", device="cpu", num_gpus=0, num_inference_steps=STEPS, batch_size=3)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return str(save_tiny(tmp_path_factory.mktemp("edit") / "kontext", seed=1))


def _img(seed, h=48, w=64):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


PHOTOS = [_img(0), _img(1), _img(2)]
PROMPTS = ["add another red mug to the left of the mug", "add a cat on the sofa", "add a mug"]
SEEDS = [11, 12, 13]


def test_batched_edit_equals_the_librarys_one_item_calls(tiny_dir):
    import torch
    from diffusers import FluxKontextPipeline

    st = ImageEdit(weights_dir=tiny_dir, **SMALL)
    st.setup()
    from scone_data.models.edit import EditItem

    items = [EditItem(im, p, s) for im, p, s in zip(PHOTOS, PROMPTS, SEEDS)]
    ours = st._editor.edit_float(items)  # one call of three
    # the library's plain calls, one item each, on a fresh load of the same directory
    pipe = FluxKontextPipeline.from_pretrained(tiny_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    ref = []
    for im, p, s in zip(PHOTOS, PROMPTS, SEEDS):
        out = pipe(image=Image.fromarray(im), prompt=p, generator=torch.Generator().manual_seed(s),
                   num_inference_steps=STEPS, guidance_scale=2.5, height=48, width=64, max_area=48 * 64,
                   output_type="np", **TINY_CALL)  # fmt: skip
        ref.append(out.images[0])
    for a, b in zip(ours, ref):
        assert a.shape == b.shape == (48, 64, 3)
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)  # fp32: batched matmuls, not bit-exact
    uint8 = st.insert(PHOTOS, PROMPTS, SEEDS)
    for (img, _), b in zip(uint8, ref):
        assert np.abs(img.astype(int) - to_uint8(b).astype(int)).max() <= 1
    assert len({img.tobytes() for img, _ in uint8}) == 3
    # the image and the prompt both change the output (the conditioning paths are live)
    same = st._editor.edit_float(
        [EditItem(PHOTOS[1], PROMPTS[0], SEEDS[0]), EditItem(PHOTOS[0], PROMPTS[1], SEEDS[0])]
    )
    assert np.abs(same[0] - ours[0]).max() > 1e-3 and np.abs(same[1] - ours[0]).max() > 1e-3
    # a mixed-size batch: each size is its own call, an item's output does not depend on the others
    mixed = st._editor.edit_float([*items[:2], EditItem(_img(5, 64, 32), "add a cup", 3), items[2]])
    assert mixed[2].shape == (64, 32, 3)
    for k, j in ((0, 0), (1, 1), (3, 2)):
        np.testing.assert_allclose(mixed[k], ours[j], atol=1e-5, rtol=0)


def test_same_seed_same_bytes_and_provenance(tiny_dir):
    import torch

    a = ImageEdit(weights_dir=tiny_dir, **SMALL)
    b = ImageEdit(weights_dir=tiny_dir, **SMALL)  # a second load of the same weights
    first = a.insert(PHOTOS[:1], PROMPTS[:1], [7])
    again = a.insert(PHOTOS[:1], PROMPTS[:1], [7]) + b.insert(PHOTOS[:1], PROMPTS[:1], [7])
    assert {encode_png(img) for img, _ in first + again} == {encode_png(first[0][0])}
    assert encode_png(a.insert(PHOTOS[:1], PROMPTS[:1], [8])[0][0]) != encode_png(first[0][0])
    prov = first[0][1]
    assert json.loads(json.dumps(prov)) == prov  # plain JSON types
    assert prov == {**prov, "use": "insertion", "model": "edit_tiny", "pipeline": "FluxKontextPipeline",
                    "weights_sha256": snapshots.digest(tiny_dir), "prompt": PROMPTS[0], "seed": 7,
                    "steps": STEPS, "guidance_scale": 2.5, "size": [48, 64], "dtype": "fp32"}  # fmt: skip
    # a re-posed target from an RGBA cut-out: laid on white, then edited
    cut = np.dstack([_img(3), np.zeros((48, 64), np.uint8)])
    cut[10:30, 20:40, 3] = 255
    (img, p), = a.repose([cut], ["the mug on a beach at sunset"], [5])  # fmt: skip
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert p["use"] == "repose" and p["prompt"] == "the mug on a beach at sunset" and p["seed"] == 5
    # as a row stage: bad rows are rejected, the others get the image and provenance
    out = a({"image": [PHOTOS[0], "x", PHOTOS[1]], "edit_prompt": ["add a mug", "add a mug", " "],
             "edit_seed": [7, 7, 7]})  # fmt: skip
    assert out["status"] == ["ok", "rejected", "rejected"] and out["reason"][2].startswith("no_edit_prompt")
    assert out["edit_provenance"][0]["use"] == "edit" and out["edited_image"][0].shape == (48, 64, 3)
    # built in code (no directory): the same weights as saved, no weights digest in provenance; the
    # output agrees to fp32 tolerance only (~1e-6 apart on this CPU although the weights are equal)
    c = ImageEdit(seed=1, **SMALL)
    ((img_c, p_c),) = c.insert(PHOTOS[:1], PROMPTS[:1], [7])
    assert p_c["weights_sha256"] is None and np.abs(img_c.astype(int) - first[0][0].astype(int)).max() <= 1
    saved, code = a._editor.pipe.transformer.state_dict(), c._editor.pipe.transformer.state_dict()
    assert all(torch.equal(saved[k], code[k]) for k in saved)


def test_missing_or_corrupt_weights_stop_before_work(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "cache"))
    text = "\n".join(ImageEdit(model="qwen_image_edit", device="cpu").validate())
    assert "does not exist" in text and "scone-data weights fetch qwen_image_edit" in text
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    w = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-64])  # a truncated download
    (msg,) = ImageEdit(model="flux1_kontext_dev", weights_dir=str(bad), device="cpu").validate()
    assert str(w) in msg and "truncated" in msg and "scone-data weights fetch flux1_kontext_dev" in msg
    st = ImageEdit(model="local", weights_dir=str(bad), device="cpu", num_gpus=0)
    with pytest.raises(registry.CheckpointError, match="diffusion_pytorch_model.safetensors"):
        st.insert(PHOTOS[:1], PROMPTS[:1], [1])
    with pytest.raises(registry.CheckpointError, match="truncated"):
        st({"image": [PHOTOS[0]], "edit_prompt": ["add a mug"], "edit_seed": [1]})
    assert not st._ready and st.stats.rows_in == 0  # nothing ran
    (bad / "vae" / "config.json").unlink()
    assert any(m.endswith(f"file {bad / 'vae' / 'config.json'} is missing") for m in st.validate())
    (bad / "model_index.json").unlink()
    assert any("model_index.json is missing" in m for m in st.validate())
    assert "weights_dir" in ImageEdit(model="local").validate()[0]


def test_weights_cli_fetches_and_verifies_a_pipeline_folder(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(registry.ENV_CACHE, str(tmp_path / "cache"))
    toy = snapshots.Snapshot("toy_edit", "edit", "toy", "test/toy-edit", "main",
                             base_url=f"file://{tiny_dir}/", layout="diffusers")  # fmt: skip
    monkeypatch.setitem(snapshots.SNAPSHOTS, "toy_edit", toy)
    listed = weights_cli("list") == 0 and capsys.readouterr().out
    assert "Qwen/Qwen-Image-Edit@main" in listed and "black-forest-labs/FLUX.1-Kontext-dev@main" in listed
    assert weights_cli("verify", "toy_edit") == 1 and "weights fetch toy_edit" in capsys.readouterr().out
    assert weights_cli("fetch", "toy_edit") == 0
    out = registry.default_path("toy_edit")
    assert out.name == "test--toy-edit" and registry.problems("toy_edit") == []
    assert weights_cli("verify", "toy_edit") == 0 and snapshots.digest(tiny_dir) in capsys.readouterr().out
    assert (
        snapshots.digest(out) == snapshots.digest(tiny_dir) and not out.with_name(out.name + ".part").exists()
    )


def test_settings_checked_picklable_and_gpu_request():
    st = ImageEdit(**SMALL)
    assert st.validate() == []
    again = pickle.loads(pickle.dumps(st))
    assert again.settings() == st.settings() and not again._ready and again.resources()["num_gpus"] == 0.0
    assert ImageEdit(model="tiny", num_gpus=1).resources() == {"num_cpus": 1.0, "num_gpus": 1.0}
    text = "\n".join(ImageEdit(model="sd", pipeline="NoSuchPipeline", batch_size=0, num_inference_steps=0,
                               size="x", bf16="y", device="tpu").validate())  # fmt: skip
    for f in ("model:", "NoSuchPipeline", "batch_size:", "num_inference_steps:", "size:", "bf16:", "device:"):
        assert f in text


def test_runs_in_a_ray_actor_pool_with_its_gpu_request(tiny_dir):
    import ray
    from ray.data import ActorPoolStrategy

    class EditActor:  # defined here: cloudpickle ships it by value (tests are not importable on workers)
        """A Ray Data callable class around the stage, one per pool worker as the executor's are (images
        travel as PNG, provenance as JSON: the stage is not a registered step with codecs yet)."""

        def __init__(self, stage):
            self.stage = stage

        def __call__(self, batch):
            out = self.stage({"image": [np.asarray(Image.open(io.BytesIO(b))) for b in batch["png"]],
                              "edit_prompt": list(batch["prompt"]), "edit_seed": [int(s) for s in batch["seed"]]})  # fmt: skip
            return {"png": [encode_png(im) for im in out["edited_image"]],
                    "prov": [json.dumps(p) for p in out["edit_provenance"]]}  # fmt: skip

    st = ImageEdit(weights_dir=tiny_dir, **{**SMALL, "batch_size": 2})
    rows = [{"png": encode_png(im), "prompt": p, "seed": s} for im, p, s in zip(PHOTOS, PROMPTS, SEEDS)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items(rows).map_batches(
            EditActor, fn_constructor_args=(st,), compute=ActorPoolStrategy(size=1), batch_size=3,
            num_cpus=1, num_gpus=st.resources()["num_gpus"], batch_format="pandas",
        )  # fmt: skip
        got = ds.take_all()
    finally:
        ray.shutdown()
    local = st.insert(PHOTOS, PROMPTS, SEEDS)
    assert [g["png"] for g in got] == [encode_png(im) for im, _ in local]  # same bytes as in-process
    assert [json.loads(g["prov"])["seed"] for g in got] == SEEDS
