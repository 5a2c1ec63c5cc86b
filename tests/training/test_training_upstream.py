"""Where the trainer follows BAGEL's and Scone's public code (issue 14): each number below was worked
out from that code's behaviour (data/transforms.py, data/dataset_base.py, train/pretrain_unified_navit.py,
scripts/train_stage2_step2.sh, inferencer.py), not from ours."""

import json

import pytest
import torch
from scone_train.config import load_config
from scone_train.data import Resize
from scone_train.packer import Packer

# (max_size, min_size, stride), (width, height) in -> out, by BAGEL's MaxLongEdgeMinShortEdgeResize:
# scale = max(min(max / long, 1), min / short); round each side, then to the nearest stride multiple;
# then the max_pixels (14*14*9*1024) and long-side caps, each rounding again.
RESIZE_TABLE = [
    ((518, 224, 14), (512, 512), (518, 518)),  # 37 x 37 = 1,369 ViT tokens (flooring gave 36 x 36)
    ((518, 224, 14), (640, 480), (518, 392)),
    ((518, 224, 14), (300, 200), (336, 224)),
    ((518, 224, 14), (1920, 1080), (518, 294)),
    ((518, 224, 14), (800, 1200), (350, 518)),
    ((518, 224, 14), (100, 1000), (56, 518)),  # the long-side cap comes last and wins over min_size
    ((518, 224, 14), (1000, 999), (518, 518)),
    ((518, 224, 14), (517, 301), (518, 308)),
    ((1024, 512, 16), (640, 480), (688, 512)),
    ((1024, 512, 16), (300, 200), (768, 512)),
    ((1024, 512, 16), (1920, 1080), (1024, 576)),
    ((1024, 512, 16), (800, 1200), (688, 1024)),
    ((1024, 512, 16), (100, 1000), (96, 1024)),  # 512 x 5120 > max_pixels: scaled to 352 x 3520 first
    ((1024, 512, 16), (333, 777), (432, 1024)),
    ((1024, 512, 16), (1000, 999), (992, 992)),
    ((1024, 512, 16), (700, 700), (704, 704)),
    ((1024, 512, 16), (517, 301), (880, 512)),
    ((980, 224, 14), (640, 480), (644, 476)),
    ((980, 224, 14), (1024, 768), (980, 728)),
    ((980, 224, 14), (333, 777), (336, 784)),
    ((980, 224, 14), (250, 4000), (56, 980)),
]


@pytest.mark.parametrize("rule, size_in, size_out", RESIZE_TABLE)
def test_resize_equals_bagel_rule(rule, size_in, size_out):
    assert Resize(*rule).size(*size_in) == size_out


def test_resize_gives_upstream_vit_token_count_for_512_square():
    w, h = Resize(518, 224, 14).size(512, 512)
    assert (w // 14) * (h // 14) == 1369


def test_padded_vae_encoding_is_the_default_and_matches_upstream_procedure():
    from scone_train.checkpoint import build_model
    from scone_train.recipe import encode_latents

    cfg = load_config("stage1_step1", ["preset=tiny", "model.path=null"])
    model, vae, _ = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 32, 48, generator=g) * 2 - 1, torch.rand(3, 48, 32, generator=g) * 2 - 1]
    batch = {"vae_images": imgs, "vae_shapes": [(2, 3), (3, 2)]}
    got = encode_latents(vae, model, batch, torch.Generator().manual_seed(1))
    # Upstream: zeros of (N, 3, max H, max W), images top-left, one encode, each latent cropped.
    x = torch.zeros(2, 3, 48, 48)
    x[0, :, :32, :48], x[1, :, :48, :32] = imgs
    with torch.no_grad():
        z = vae.encode(x, generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(got, model.patchify_latents(list(z), batch["vae_shapes"]))
    unpadded = encode_latents(vae, model, batch, torch.Generator().manual_seed(1), padded=False)
    assert unpadded.shape == got.shape and not torch.allclose(unpadded, got)
    same = {"vae_images": [imgs[0], imgs[0]], "vae_shapes": [(2, 3), (2, 3)]}  # one size: no padding
    a = encode_latents(vae, model, same, torch.Generator().manual_seed(2))
    assert torch.equal(a, encode_latents(vae, model, same, torch.Generator().manual_seed(2), padded=False))


def _script_stage2_step2_trainable(names: list[str]) -> set[str]:
    """Scone's scripts/train_stage2_step2.sh flags applied as its trainer applies them: freeze_llm_und
    freezes language_model.model.* except names holding "moe_gen" or "embed_tokens"; freeze_llm_gen
    freezes "moe_gen"; freeze_mlp_und "connector"; freeze_mlp_gen "vae2llm"/"llm2vae"; freeze_vit the
    ViT. BAGEL's position tables never train; lm_head keeps requires_grad but gets no gradient."""
    out = set()
    for n in names:
        if n.startswith("language_model.model.") and not ("moe_gen" in n or "embed_tokens" in n):
            continue
        if "moe_gen" in n or "connector" in n or "vae2llm" in n or "llm2vae" in n:
            continue
        if n.startswith(("vit_model.", "language_model.lm_head")) or "pos_embed" in n:
            continue
        out.add(n)
    return out


def test_released_stage2_step2_trains_exactly_the_scripts_set(shards_dir, tmp_path):
    from safetensors.torch import load_file
    from scone_train.checkpoint import build_model, save_model_dir
    from scone_train.recipe import set_trainable, train

    cfg = load_config(
        "stage2_step2_released",
        ["preset=tiny", "model.path=null", f"data.shards=[{shards_dir}]", "train.steps=1",
         "train.warmup_steps=0", "train.lr=1e-2", "data.max_tokens=160",
         f"train.output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    model, vae, tok = build_model(cfg)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    save_model_dir(tmp_path / "start", model.state_dict(), model, vae, tok, cfg)
    names = [n for n, _ in model.named_parameters()]
    want = _script_stage2_step2_trainable(names)
    assert want == {"language_model.model.embed_tokens.weight"} | {
        f"time_embedder.mlp.{i}.{k}" for i in (0, 2) for k in ("weight", "bias")
    }
    assert set(set_trainable(model, cfg["train"]["trainable"], cfg["train"]["frozen"])) == want
    cfg["model"]["path"] = str(tmp_path / "start")
    train(cfg)
    before = load_file(str(tmp_path / "start" / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert {k for k in before if not torch.equal(before[k], after[k])} == want  # 5 tensors
    # The default stage 2 step 2 follows Scone's README: both experts train.
    default = load_config("stage2_step2", ["preset=tiny", "model.path=null"])
    trained = set_trainable(model, default["train"]["trainable"], default["train"]["frozen"])
    assert any("mlp_moe_gen" in n for n in trained) and any(".mlp.up_proj" in n for n in trained)


def test_warmup_is_transformers_constant_schedule_with_warmup():
    from scone_train.recipe import warmup_factor
    from transformers.optimization import get_constant_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_constant_schedule_with_warmup(opt, num_warmup_steps=2000)
    for step in range(2300):
        assert warmup_factor(step, 2000) == pytest.approx(sched.get_last_lr()[0], abs=1e-12), step
        opt.step()
        sched.step()
    assert warmup_factor(0, 2000) == 0.0 and warmup_factor(999, 2000) == pytest.approx(999 / 2000)
    assert warmup_factor(0, 0) == 1.0


def test_stage_lengths_follow_scone():
    """Scone's README: stage 1 steps run one epoch each, stage 2 steps 1,000 steps each; its scripts
    keep BAGEL's 2,000 warm-up steps (so stage 2 never leaves the warm-up)."""
    for stage, epochs, steps in [
        ("stage1_step1", 1, 100000),
        ("stage1_step2", 1, 100000),
        ("stage2_step1", None, 1000),
        ("stage2_step2", None, 1000),
        ("stage2_step2_released", None, 1000),
    ]:
        tc = load_config(stage)["train"]
        assert (tc["epochs"], tc["steps"], tc["warmup_steps"]) == (epochs, steps, 2000), stage


def test_epochs_end_a_stage_after_one_pass(shards_dir, tmp_path):
    from scone_train.recipe import train

    cfg = load_config(
        "stage1_step1",
        ["preset=tiny", "model.path=null", f"data.shards=[{shards_dir}]", "train.steps=50",
         "train.warmup_steps=0", "data.max_tokens=160", "train.log_keys=true",
         f"train.output_dir={tmp_path}"],
    )  # fmt: skip
    losses = train(cfg)
    keys = [k for line in (tmp_path / "log.jsonl").read_text().splitlines()
            for k in json.loads(line)["keys_per_rank"][0]]  # fmt: skip
    # 8 train samples, 4 of them composition tasks: each seen once, then the stage ends by itself
    assert sorted(keys) == ["train00000", "train00001", "train00004", "train00005"]
    assert 1 < len(losses) < 50


def _entries(lengths):
    return [((0, i), {"num_tokens": n, "key": "abcdefg"[i]}) for i, n in enumerate(lengths)]


def _keys(batches):
    return ["".join(it["key"] for _, it in b) for b, _ in batches]


def test_buffer_packer_follows_bagel_packed_dataset():
    """Lengths a=4 b=5 c=3 d=6 e=2 f=5 g=4, budget 10, prefer the buffer below 6, buffer of 1.
    BAGEL's loop: [a b] (c is buffered; d overflows with the buffer full: closes the batch and is
    dropped), then c from the buffer, e, f: [c e f] reaches 10 tokens and closes."""
    kw = {"prefer_buffer_before": 6, "max_buffer_size": 1}
    up = Packer(10, keep_overflow=False, **kw)
    assert _keys(list(up.batches(_entries([4, 5, 3, 6, 2, 5, 4])))) == ["ab", "cef"]
    # Here d is kept and opens the next batch; e joins; f overflows with c still buffered: [d e]
    # closes, then c (preferred from the buffer below 6 tokens) joins f; g is buffered.
    ours = Packer(10, **kw)
    got = list(ours.batches(_entries([4, 5, 3, 6, 2, 5, 4])))
    assert _keys(got) == ["ab", "de"]
    assert got[-1][1] == {"open": [[0, 5]], "buffer": [[0, 2]]}  # f open, c buffered after [d e]
    flush = Packer(10, rule="flush")
    assert _keys(list(flush.batches(_entries([4, 5, 3, 6, 2, 5, 4]), finish=True))) == ["ab", "cd", "ef", "g"]


def test_buffer_fit_tops_up_a_batch_from_the_buffer():
    """a=6 b=5 c=5 d=6, budget 10, buffer of 1, prefer below 2: b is buffered, c overflows with the
    buffer full and opens the next batch; d overflows too, and buffer_fit first adds b (5 fits c)."""
    kw = {"prefer_buffer_before": 2, "max_buffer_size": 1}
    plain = Packer(10, **kw).batches(_entries([6, 5, 5, 6]), finish=True)
    assert _keys(list(plain)) == ["a", "c", "d", "b"]
    fit = Packer(10, rule="buffer_fit", **kw).batches(_entries([6, 5, 5, 6]), finish=True)
    assert _keys(list(fit)) == ["a", "cb", "d"]


def test_packer_resumes_exactly_from_a_snapshot():
    import random

    rng = random.Random(0)
    stream = [((0, i), {"num_tokens": rng.randint(5, 60), "key": str(i)}) for i in range(400)]
    for rule in ("buffer", "buffer_fit", "flush"):
        kw = {"rule": rule, "prefer_buffer_before": 60, "max_buffer_size": 4}
        full = [[p for p, _ in b] for b, _ in Packer(100, **kw).batches(stream)]
        first = Packer(100, **kw)
        it = first.batches(iter(stream))
        head = [next(it) for _ in range(10)]
        snap, by_pos = head[-1][1], dict(stream)
        taken = {tuple(p) for p in snap["open"] + snap["buffer"]}
        consumed = max([*(p for b, _ in head for p, _ in b), *taken])
        again = Packer(100, **kw)
        again.restore(
            [(tuple(p), by_pos[tuple(p)]) for p in snap["open"]],
            [(tuple(p), by_pos[tuple(p)]) for p in snap["buffer"]],
        )
        rest = [e for e in stream if e[0] > consumed]
        resumed = [[p for p, _ in b] for b, _ in again.batches(rest)]
        assert [[p for p, _ in b] for b, _ in head] + resumed == full, rule
