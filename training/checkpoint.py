"""Model building and self-contained checkpoints in BAGEL's directory layout.

A checkpoint directory holds what an official BAGEL directory holds (llm_config.json, vit_config.json,
ae.safetensors, tokenizer files; weights as model.safetensors with BAGEL's key names — an official
directory's ema.safetensors is read the same way) plus our files: vae_config.json, bagel_config.json,
config.yaml (the resolved stage config), optimizer.safetensors + optimizer.json and trainer_state.json
(step, stream positions per rank, RNG states). Any checkpoint is a valid `model.path` for the next stage.
"""

import dataclasses
import json
import logging
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from scone_train.bagel import Bagel, BagelConfig
from scone_train.layers import sincos_2d
from scone_train.llm import LLMConfig
from scone_train.tokenizer import build_tiny_tokenizer, load_tokenizer
from scone_train.vae import AutoEncoder, VAEConfig
from scone_train.vit import ViTConfig

log = logging.getLogger(__name__)


def _pick(cls, d: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def build_model(cfg: dict):
    """(model, vae, tokenizer) from cfg['model']: a checkpoint dir at model.path, else random tiny/size."""
    path = cfg["model"].get("path")
    if path:
        return load_pretrained(path)
    size = cfg["model"]["size"]
    tok = build_tiny_tokenizer()
    llm = _pick(LLMConfig, {**size["llm"], "vocab_size": len(tok)})
    vit = _pick(ViTConfig, size["vit"])
    vae_cfg = _pick(VAEConfig, size["vae"])
    bcfg = _pick(
        BagelConfig, {**size["bagel"], "z_channels": vae_cfg.z_channels, "vae_downsample": vae_cfg.downsample}
    )
    torch.manual_seed(cfg["model"].get("init_seed", 0))
    model, vae = Bagel(llm, vit, bcfg), AutoEncoder(vae_cfg)
    model.init_weights(cfg["model"].get("init_seed", 0))
    return model, vae, tok


def model_skeleton(path: str | Path) -> tuple[Bagel, AutoEncoder]:
    """The (model, VAE) a checkpoint directory describes, built on the meta device (no weights).

    Reads llm_config.json and vit_config.json (an official BAGEL directory's as they are) and, when
    present, our vae_config.json / bagel_config.json; without them the BAGEL-7B-MoT values apply
    (FLUX VAE, max_latent_size 64, vit_max_num_patch_per_side 70, as in BAGEL's app.py).
    """
    p = Path(path)
    llm = _pick(LLMConfig, json.loads((p / "llm_config.json").read_text()))
    vit_raw = json.loads((p / "vit_config.json").read_text())
    # BAGEL drops SigLIP's last layer at load time (num_hidden_layers - 1); we store the same way.
    vit = _pick(ViTConfig, {**vit_raw, "num_hidden_layers": vit_raw["num_hidden_layers"] - 1})
    vae_cfg = (
        _pick(VAEConfig, json.loads((p / "vae_config.json").read_text()))
        if (p / "vae_config.json").exists()
        else VAEConfig()
    )
    extra = json.loads((p / "bagel_config.json").read_text()) if (p / "bagel_config.json").exists() else {}
    bcfg = _pick(
        BagelConfig, {**extra, "z_channels": vae_cfg.z_channels, "vae_downsample": vae_cfg.downsample}
    )
    with torch.device("meta"):
        return Bagel(llm, vit, bcfg), AutoEncoder(vae_cfg)


def _cast(sd: dict, dtype: torch.dtype) -> dict:
    """Floating tensors to `dtype` (BAGEL's ema.safetensors is bf16: its trainer saves the EMA that way)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def _exact_sincos_tables(model: Bagel) -> None:
    """Replace the frozen sin-cos tables by their exact values when the loaded ones agree.

    An official checkpoint holds them rounded to bf16 (|error| <= 2^-8 for values in [-1, 1]); BAGEL's
    own fine-tuning drops them and recomputes them. A table that disagrees by more than that rounding
    was built some other way: it is kept as loaded, with a warning.
    """
    for name in ("vit_pos_embed", "latent_pos_embed"):
        emb = getattr(model, name)
        exact = sincos_2d(emb.pos_embed.shape[1], emb.max_side).to(emb.pos_embed.dtype)
        err = (emb.pos_embed.detach().float() - exact.float()).abs().max().item()
        if (
            err <= 1e-2
        ):  # bf16 rounding in [-1, 1] is <= 2^-8 (~0.004); a table built another way is off by far more
            emb.pos_embed.data.copy_(exact)
        else:
            log.warning("%s.pos_embed differs from the 2-D sin-cos table by %.3g; kept as loaded", name, err)
        emb.pos_embed.requires_grad_(False)


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a BAGEL checkpoint directory (or ours) with strict key and shape matching.

    Weights are cast to `dtype` (fp32 by default: the trainer keeps fp32 master weights, and an
    official ema.safetensors is stored in bf16).
    """
    p = Path(path)
    model, vae = model_skeleton(p)
    weights = p / "model.safetensors" if (p / "model.safetensors").exists() else p / "ema.safetensors"
    model.load_state_dict(_cast(load_file(str(weights)), dtype), strict=True, assign=True)
    vae.load_state_dict(_cast(load_file(str(p / "ae.safetensors")), dtype), strict=True, assign=True)
    _exact_sincos_tables(model)
    return model, vae, load_tokenizer(p)


def save_model_dir(out: Path, model_sd: dict, model: Bagel, vae: AutoEncoder, tok, cfg: dict) -> None:
    """Write the self-contained model part of a checkpoint (rank 0 only)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model_sd.items()}, str(out / "model.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(out / "ae.safetensors"))
    llm = dataclasses.asdict(model.llm_cfg) | {
        "model_type": "qwen2",
        "qk_norm": True,
        "layer_module": "Qwen2MoTDecoderLayer",
        "tie_word_embeddings": False,
    }
    vit = dataclasses.asdict(model.vit_cfg) | {"num_hidden_layers": model.vit_cfg.num_hidden_layers + 1}
    (out / "llm_config.json").write_text(json.dumps(llm, indent=2))
    (out / "vit_config.json").write_text(json.dumps(vit, indent=2))
    (out / "vae_config.json").write_text(json.dumps(dataclasses.asdict(vae.cfg), indent=2))
    (out / "bagel_config.json").write_text(json.dumps(dataclasses.asdict(model.cfg), indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    tok.save_pretrained(str(out))


def save_optimizer(out: Path, osd: dict) -> None:
    """Full (unsharded) optimizer state dict {state: {fqn: {...}}, param_groups} -> safetensors + json."""
    flat, scalars = {}, {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                flat[f"{fqn}::{k}"] = v.detach().cpu().contiguous().reshape(v.shape)
            else:
                scalars[f"{fqn}::{k}"] = v
    save_file(flat, str(out / "optimizer.safetensors"))
    (out / "optimizer.json").write_text(json.dumps({"param_groups": osd["param_groups"], "scalars": scalars}))


def load_optimizer(path: Path) -> dict:
    flat = load_file(str(path / "optimizer.safetensors"))
    meta = json.loads((path / "optimizer.json").read_text())
    state: dict = {}
    for key, v in list(flat.items()) + list(meta["scalars"].items()):
        fqn, k = key.split("::")
        state.setdefault(fqn, {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}
