"""The detector's fast paths give exactly what the straightforward code gave.

``_old_detections`` and ``_old_process`` are the stage's code before phrases were decoded only for
the survivors, images were resized as uint8 and normalised on the device, and the next chunk was
prepared in a thread; the stage must reproduce them exactly (tiny preset, CPU).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("groundingdino")

from scone_data.models.grounding_dino import (  # noqa: E402
    GroundingDinoPredictor,
    build_grounding_dino,
    prepare_image,
    resize_image,
)
from scone_data.models.vocab import load_vocabulary  # noqa: E402
from scone_data.stages.detect import GroundingDinoDetector  # noqa: E402

SMALL = dict(model="tiny", seed=1, image_size=96, max_size=160, device="cpu")
LVIS = [c.label for c in load_vocabulary("lvis")[:150]]  # > 256 tokens: two prompt chunks
LABEL_SETS = [["dog", "red mug", "teddy bear"], ["person"], LVIS]
SETTINGS = [
    dict(box_threshold=0.0, text_threshold=0.0, nms_iou=1.0, dedup_iou=1.0, max_detections=10_000),
    dict(box_threshold=0.0, text_threshold=0.0),
    dict(box_threshold=0.35, text_threshold=0.25),  # the defaults
    dict(box_threshold=0.3, text_threshold=0.25, max_detections=5),
]


def _img(seed, h=90, w=120):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _old_detections(st, prompts, outs, width, height):
    """GroundingDinoDetector._detections as it was (a phrase for every query above the thresholds)."""
    from groundingdino.util.utils import get_phrases_from_posmap
    from torchvision.ops import batched_nms, box_convert, nms

    tok = st._pred.tokenizer
    boxes, scores, labels, phrases = [], [], [], []
    for prompt, o in zip(prompts, outs):
        probs = o["logits"]
        score = probs.max(dim=1)[0]
        spans = torch.zeros(len(prompt.spans), probs.shape[1], dtype=torch.bool, device=probs.device)
        for k, (_, a, b) in enumerate(prompt.spans):
            spans[k, a:b] = True
        lab_score, lab = (probs[:, None, :] * spans).amax(dim=-1).max(dim=1)
        keep = (score > st.box_threshold) & (lab_score > st.text_threshold)
        if not keep.any():
            continue
        ids = tok(prompt.caption)
        for lg in probs[keep].cpu():
            phrases.append(get_phrases_from_posmap(lg > st.text_threshold, ids, tok).replace(".", "").strip())
        labels += [prompt.spans[k][0] for k in lab[keep].tolist()]
        boxes.append(o["boxes"][keep])
        scores.append(score[keep])
    if not boxes:
        return []
    size = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes[0].device)
    xyxy = box_convert(torch.cat(boxes) * size, "cxcywh", "xyxy")
    xyxy = torch.minimum(xyxy.clamp_min(0), size)
    sc = torch.cat(scores)
    names = sorted(set(labels))
    lab_idx = torch.tensor([names.index(x) for x in labels], device=sc.device)
    keep = batched_nms(xyxy, sc, lab_idx, st.nms_iou)
    keep = keep[nms(xyxy[keep], sc[keep], st.dedup_iou)][: st.max_detections]
    xyxy, sc = xyxy[keep].cpu().tolist(), sc[keep].cpu().tolist()
    return [
        {"label": labels[k], "box_xyxy": [float(v) for v in b], "det_score": float(s),
         "det_source": "groundingdino", "phrase": phrases[k]}
        for k, b, s in zip(keep.tolist(), xyxy, sc)
    ]  # fmt: skip


def _old_process(st, images, labels):
    """The old chunk loop: prepare_image on the host, no prefetch, _old_detections."""
    out = []
    for start in range(0, len(images), st.batch_size):
        chunk = images[start : start + st.batch_size]
        prompts = [st._prompts(labs).prompts for labs in labels[start : start + st.batch_size]]
        prepared = [prepare_image(im, st.image_size, st.max_size) for im in chunk]
        raw = st._pred.forward_torch(prepared, [[p.caption for p in ps] for ps in prompts])
        for im, ps, outs in zip(chunk, prompts, raw):
            out.append(_old_detections(st, ps, outs, im.shape[1], im.shape[0]))
    return out


@pytest.fixture(scope="module")
def stages():
    """One stage per setting, sharing one tiny model; labels come from the captions (COCO)."""
    out = [GroundingDinoDetector(batch_size=2, **SMALL, **kw) for kw in SETTINGS]
    out[0].setup()
    for st in out[1:]:
        st.__dict__.update({k: v for k, v in out[0].__dict__.items() if k.startswith("_") and k != "_ready"})
        st._ready = True
    return out


@pytest.fixture(scope="module")
def pred():
    return GroundingDinoPredictor(build_grounding_dino("tiny", seed=1))


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_detections_equal_the_old_code(stages, setting):
    st = stages[setting]
    n_found = 0
    for seed, labels in enumerate(LABEL_SETS):
        ps = st._prompts(labels)
        img = _img(seed, 90 + 10 * seed, 120 - 15 * seed)
        outs = st._pred.forward_torch([prepare_image(img, 96, 160)], [[p.caption for p in ps.prompts]])[0]
        h, w = img.shape[:2]
        new = st._detections(ps, outs, w, h)
        assert new == _old_detections(st, ps.prompts, outs, w, h)
        n_found += len(new)
        if labels is LVIS:
            assert len(ps.prompts) >= 2
            if setting == 0:  # every query survives: the second chunk's phrases are checked too
                assert {d["label"] for d in new} & {lab for lab, _, _ in ps.prompts[1].spans}
    assert n_found > 0


def test_nms_sees_the_old_label_ids(stages):
    """Batched NMS offsets boxes by class id, and the offset's rounding moves IoUs, so the ids must be
    the old ones (index among the kept labels, here 0), not ranks in the prompt set's vocabulary: at
    id 149 these two boxes (IoU ~0.5) would both survive."""
    st, ps = stages[2], stages[2]._prompts(LVIS)
    label = ps.names[-1]
    boxes = torch.tensor([[0.5764486789703369, 0.5039907693862915, 0.12498614192008972, 0.20207902789115906],
                          [0.5965495705604553, 0.520481288433075, 0.07953882217407227, 0.15878944098949432]])  # fmt: skip
    outs = []
    for p, ids in zip(ps.prompts, ps.input_ids):
        logits = torch.zeros(2, len(ids))
        for lab, a, _ in p.spans:
            if lab == label:
                logits[:, a] = torch.tensor([0.9, 0.8])
        outs.append({"logits": logits, "boxes": boxes})
    new = st._detections(ps, outs, 1440, 1080)
    assert new == _old_detections(st, ps.prompts, outs, 1440, 1080) and len(new) == 1


@pytest.mark.parametrize("setting", [1, 3])
def test_process_equals_the_old_loop(stages, setting):
    st = stages[setting]  # five images in three chunks of batch_size 2
    captions = ["a dog and a teddy bear", "two people at a dining table", "a red cup", "a cat", "a bus"]
    images = [_img(s, h, w) for s, (h, w) in enumerate([(90, 120), (120, 90), (64, 200), (96, 96), (97, 33)])]
    out = st({"image": images, "caption": captions, "subjects": [[] for _ in images]})["subjects"]
    ref = _old_process(st, images, [st._matcher.match(c) for c in captions])
    assert out == ref and sum(map(len, out)) > 0


@pytest.mark.parametrize(
    "hw,size,max_size",
    [((90, 120), 96, 160), ((120, 90), 96, 160), ((40, 300), 96, 160), ((300, 40), 96, 160),
     ((96, 130), 96, 160), ((101, 101), 96, 1333), ((1080, 1440), 800, 1333), ((1440, 1080), 800, 1333),
     ((480, 1920), 800, 1333)],
)  # fmt: skip
def test_resize_and_device_normalise_equal_prepare_image(pred, hw, size, max_size):
    img = _img(sum(hw), *hw)
    ref = prepare_image(img, size, max_size)
    (ours,) = pred.normalize([resize_image(img, size, max_size)])
    assert ours.shape == ref.shape and ours.is_contiguous()
    assert torch.equal(ours, ref)
