"""The BAGEL-layout model: Qwen2-MoT decoder + SigLIP NaViT + connector + flow-matching heads.

State-dict keys equal those of BAGEL's ema.safetensors (language_model.*, vit_model.*, connector.*,
vit_pos_embed.pos_embed, time_embedder.mlp.*, vae2llm.*, llm2vae.*, latent_pos_embed.pos_embed);
the VAE is held beside it (ae.safetensors), frozen.
"""

from dataclasses import dataclass

import torch
from scone_train.attention import build_attention
from scone_train.layers import MLPConnector, PositionEmbedding, TimestepEmbedder
from scone_train.llm import LLMConfig, Qwen2MoTForCausalLM
from scone_train.semantic_mask import semantic_key_mask
from scone_train.vit import SiglipNaViT, ViTConfig, patchify
from torch import nn


@dataclass
class BagelConfig:
    latent_patch_size: int = 2
    max_latent_size: int = 64  # Scone's scripts use 64 (BAGEL-7B-MoT inference too)
    vit_max_num_patch_per_side: int = 70
    z_channels: int = 16
    vae_downsample: int = 8


class Bagel(nn.Module):
    def __init__(self, llm_cfg: LLMConfig, vit_cfg: ViTConfig, cfg: BagelConfig):
        super().__init__()
        self.cfg, self.llm_cfg, self.vit_cfg = cfg, llm_cfg, vit_cfg
        h = llm_cfg.hidden_size
        self.patch_latent_dim = cfg.latent_patch_size**2 * cfg.z_channels
        self.language_model = Qwen2MoTForCausalLM(llm_cfg)
        self.vit_model = SiglipNaViT(vit_cfg)
        self.connector = MLPConnector(vit_cfg.hidden_size, h)
        self.vit_pos_embed = PositionEmbedding(cfg.vit_max_num_patch_per_side, h)
        self.time_embedder = TimestepEmbedder(h)
        self.vae2llm = nn.Linear(self.patch_latent_dim, h)
        self.llm2vae = nn.Linear(h, self.patch_latent_dim)
        self.latent_pos_embed = PositionEmbedding(cfg.max_latent_size, h)

    def init_weights(self, seed: int) -> None:
        """Random init for runs without a checkpoint (normal(0, 0.02) linears/embeddings, llm2vae zero)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim >= 2:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        nn.init.zeros_(self.llm2vae.weight)  # BAGEL zero-inits the velocity head
        nn.init.zeros_(self.llm2vae.bias)

    # ---- inputs -------------------------------------------------------------------------------
    def patchify_latents(self, latents: list[torch.Tensor], shapes: list[tuple]) -> torch.Tensor:
        """latents [(16, h*p, w*p)] -> (sum h*w, p*p*16), token order row-major, features (p, q, c)."""
        p = self.cfg.latent_patch_size
        return torch.cat([patchify(z[:, : h * p, : w * p], p) for z, (h, w) in zip(latents, shapes)])

    def unpatchify_latents(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p, c = self.cfg.latent_patch_size, self.cfg.z_channels
        z = tokens.reshape(h, w, p, p, c)
        return torch.einsum("hwpqc->chpwq", z).reshape(c, h * p, w * p)

    def embed(self, batch: dict, latent_tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Packed input sequence (L, H): text embeddings, ViT features, noised VAE latents."""
        lm = self.language_model.model
        text = lm.embed_tokens(batch["text_ids"])
        x = text.new_zeros(batch["seq_len"], text.shape[-1])
        x[batch["text_indexes"]] = text
        if batch["vit_indexes"].numel():
            with torch.no_grad():  # the ViT is frozen in every Scone stage
                feats = self.vit_model(batch["vit_pixels"], batch["vit_position_ids"], batch["vit_seqlens"])
            vit = self.connector(feats.to(text.dtype)) + self.vit_pos_embed(batch["vit_position_ids"])
            x[batch["vit_indexes"]] = vit.to(x.dtype)
        lat = (
            self.vae2llm(latent_tokens)
            + self.time_embedder(t)
            + self.latent_pos_embed(batch["latent_position_ids"])
        )
        x[batch["vae_indexes"]] = lat.to(x.dtype)
        return x

    # ---- training forward -----------------------------------------------------------------------
    def forward(
        self,
        batch: dict,
        clean_latents: torch.Tensor,
        timestep_shift: float = 1.0,
        mask_cfg=None,
        checkpoint: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict:
        """Flow-matching forward over one packed batch.

        clean_latents: (N_vae, p*p*16) patchified latents of every VAE token (refs and targets), fp32.
        batch["timesteps"]: (N_vae,) logits n ~ N(0, 1) for target tokens, -inf for clean references.
        generator: source of the noise eps (the trainer passes one keyed by (seed, rank, step), so that
        a resumed run draws the same noise whatever else used the global RNG).
        Returns {"mse": (N_target,) per-token MSE over the p*p*16 features, "mask_frac": float | None}.
        """
        t = torch.sigmoid(batch["timesteps"].float())
        t = timestep_shift * t / (1 + (timestep_shift - 1) * t)
        eps = torch.randn(
            clean_latents.shape, generator=generator, device=clean_latents.device, dtype=clean_latents.dtype
        )
        noised = (1 - t[:, None]) * clean_latents + t[:, None] * eps
        pred, mask_frac = self.predict_velocity(batch, noised, t, mask_cfg, checkpoint)
        is_target = batch["vae_is_target"]  # (N_vae,) bool, same order as vae_indexes
        velocity = (eps - clean_latents)[is_target]  # v = dx_t/dt points from data to noise
        mse = ((pred - velocity) ** 2).mean(dim=-1)
        return {"mse": mse, "mask_frac": mask_frac}

    def predict_velocity(
        self, batch: dict, latents: torch.Tensor, t: torch.Tensor, mask_cfg=None, checkpoint: bool = False
    ) -> tuple:
        """The velocity head over one packed batch (shared by training and sampling).

        latents: (N_vae, p*p*16) fp32, clean for references and x_t for targets; t: (N_vae,) in [0, 1]
        (0 for clean references, 1 = pure noise). Returns (v (N_target, p*p*16) fp32 in the order of
        batch["mse_indexes"], fraction of reference tokens the Scone mask hid or None).
        """
        x = self.embed(batch, latents, t)
        und, gen = batch["und_indexes"], batch["vae_indexes"]
        attn_base = build_attention(batch, x.device)
        state = {"attn": attn_base, "mask_frac": None}
        use_mask = mask_cfg is not None and mask_cfg.get("enabled", False)
        layers = set(range(mask_cfg["first_layer"], mask_cfg["last_layer"] + 1)) if use_mask else set()

        def after_layer(i, hidden):
            if use_mask and i == mask_cfg["after_layer"]:
                masked, frac = semantic_key_mask(
                    hidden, batch["scone_refs"], batch["instr_indexes"], mask_cfg["threshold"]
                )
                state["attn"], state["mask_frac"] = (
                    attn_base.with_key_mask(masked, batch["target_mask"]),
                    frac,
                )

        hidden = self.language_model(
            x,
            batch["position_ids"],
            und,
            gen,
            lambda i: state["attn"] if i in layers else attn_base,
            after_layer=after_layer if use_mask else None,
            checkpoint=checkpoint,
        )
        target_rows = batch["mse_indexes"]  # positions in the sequence of target VAE tokens
        return self.llm2vae(hidden[target_rows]).float(), state["mask_frac"]
