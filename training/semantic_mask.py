"""Scone's attention-based mask: hide reference regions unrelated to the instruction from the target.

After decoder layer `after_layer` (8 in Scone), for every reference image of a sample: the cosine
similarity between each ViT token's hidden state and each instruction token's hidden state, averaged
over the instruction tokens, gives one score per ViT token (grid hv x wv). Bilinear resizing
(align_corners=False) carries it onto the reference's VAE grid (ha x wa). Reference ViT and VAE keys
scoring below `threshold` are hidden from target queries in the following layers; all other keys stay.
"""

import torch
import torch.nn.functional as F


@torch.no_grad()
def reference_scores(vit_h: torch.Tensor, text_h: torch.Tensor, vit_hw: tuple, vae_hw: tuple) -> tuple:
    """vit_h (hv*wv, H), text_h (Nt, H) -> (vit scores (hv*wv,), vae scores (ha*wa,)) fp32."""
    v = F.normalize(vit_h.float(), dim=-1)
    t = F.normalize(text_h.float(), dim=-1)
    vit_scores = (v @ t.T).mean(dim=1)
    grid = vit_scores.reshape(1, 1, *vit_hw)
    vae_scores = F.interpolate(grid, size=tuple(vae_hw), mode="bilinear", align_corners=False).reshape(-1)
    return vit_scores, vae_scores


@torch.no_grad()
def semantic_key_mask(hidden: torch.Tensor, refs: list, instr_indexes: list, threshold: float) -> tuple:
    """Keys to hide from target queries.

    hidden: (L, H) hidden states after the chosen layer. refs: per sample, a list of
    {"vit": (start, hv, wv), "vae": (start, ha, wa)} in sequence positions. instr_indexes: per sample,
    an int64 tensor of instruction token positions (may be empty: text dropped for CFG -> no mask).
    Returns (masked (L,) bool, fraction of reference tokens masked as a float, or 0.0 if none).
    """
    masked = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    n_ref = 0
    for sample_refs, instr in zip(refs, instr_indexes):
        if instr.numel() == 0:
            continue
        text_h = hidden[instr]
        for ref in sample_refs:
            (vs, hv, wv), (as_, ha, wa) = ref["vit"], ref["vae"]
            vit_s, vae_s = reference_scores(hidden[vs : vs + hv * wv], text_h, (hv, wv), (ha, wa))
            masked[vs : vs + hv * wv] = vit_s < threshold
            masked[as_ : as_ + ha * wa] = vae_s < threshold
            n_ref += hv * wv + ha * wa
    frac = float(masked.sum()) / n_ref if n_ref else 0.0
    return masked, frac
