"""intra_strategy: embedding, through the real transformers loading path (a tiny random CLIP on disk)."""

import numpy as np
import pytest
from pairs_bank import make_bank

from scone_data.pairs import PairConfig, plan_samples
from scone_data.pairs.distractors import order_intra
from scone_data.pairs.embeddings import ImageEmbedder, masked_crop


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    d = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)  # fmt: skip
    CLIPVisionModelWithProjection(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return str(d)


def test_masked_crop_grays_the_background():
    img = np.zeros((10, 10, 3), np.uint8)
    img[2:6, 3:8] = 200
    mask = np.zeros((10, 10), bool)
    mask[2:6, 3:5] = True
    crop = masked_crop(img, mask)
    assert crop.shape == (4, 2, 3) and (crop == 200).all()
    mask[5, 7] = True
    crop = masked_crop(img, mask)
    assert crop.shape == (4, 5, 3) and crop[0, 4, 0] == 127 and crop[3, 4, 0] == 200


def test_embedding_is_unit_norm_deterministic_and_an_identical_copy_ranks_first(tiny_clip):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:30, 8:35] = True
    emb = ImageEmbedder(tiny_clip)
    a = emb.embed(img, mask)
    assert a.dtype == np.float32 and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert np.array_equal(a, ImageEmbedder(tiny_clip).embed(img, mask))
    import torch

    assert torch.is_grad_enabled()  # no global side effect on the process (a trainer may share it)

    class S:
        def __init__(self, sid):
            self.subject_id = sid

    other = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    feats = {"b-copy": emb.embed(img.copy(), mask), "a-other": emb.embed(other, mask),
             "c-flat": emb.embed(np.full_like(img, 30), mask)}  # fmt: skip
    ranked = order_intra(a, [S("a-other"), S("c-flat"), S("b-copy")], feats, np.multiply)
    assert ranked[0].subject_id == "b-copy"


def test_planning_with_embedding_look_alikes(tiny_clip, tmp_path):
    subjects, images, pixels = make_bank(n_synthetic=8)
    c = PairConfig(distractor_strategy="random", intra_strategy="embedding", embedding_model=tiny_clip,
                   val_fraction=0.0, num_samples=8, task_mix={"distinction_single_intra": 1.0})  # fmt: skip
    assert c.validate() == []
    plans, rejects = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    assert plans, rejects
    again, _ = plan_samples(subjects, images, c, load_image=pixels.__getitem__)
    assert [p.key for p in again] == [p.key for p in plans]
    missing = PairConfig(intra_strategy="embedding", embedding_model=str(tmp_path / "nope")).validate()
    assert any(p.startswith("embedding_model") for p in missing)
