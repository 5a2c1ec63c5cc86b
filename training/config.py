"""Stage configs: one YAML per stage, `key=value` overrides, presets, and validation of every field.

Overrides use dotted keys (`train.steps=5`, `data.shards=[a,b]`), values parsed as YAML by the parser
`scone-data` uses (scone_data/runtime/overrides.py: duplicate keys refused, `1e-3` a float).
`preset=tiny` merges the tiny model/data sizes below before the other overrides are applied.
Every field is checked against its type (`bool` is not an int; `1e3` is the int 1000) and every
problem is reported at once (a ConfigError, a ValueError: `scone-train` exits 2).
"""

import copy
from pathlib import Path

from scone_train.data import TASKS
from scone_train.packer import RULES

from scone_data.runtime.overrides import ConfigError, check_value, parse_overrides, read_yaml, set_dotted

CONFIG_DIR = Path(__file__).parent / "configs"

# Every code path at a size a CPU runs in seconds. 18 decoder layers so that the Scone mask
# (computed after layer 8, applied in 9-16) has the same layer indices as at full size.
TINY = {
    "model": {
        "size": {
            "llm": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 18,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "rope_theta": 10000.0,
            },
            "vit": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": 64,
                "patch_size": 8,
            },
            "vae": {"ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "groups": 8},
            "bagel": {"max_latent_size": 8, "vit_max_num_patch_per_side": 8},
        },
    },
    "data": {
        "vae_image": {"max_size": 64, "min_size": 32, "stride": 16},
        "vit_image": {"max_size": 64, "min_size": 32, "stride": 8},
        "max_tokens": 512,
        "max_tokens_per_sample": 512,
        "prefer_buffer_before": 320,  # the same share of the budget as BAGEL's 16384 of 26496
        "num_workers": 0,
    },
    "train": {"dtype": "fp32", "activation_checkpointing": False, "log_every": 1},
}
PRESETS = {"tiny": TINY}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
        )
    return out


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """YAML file (or the name of a bundled config) + `key=value` overrides -> validated dict."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    cfg = read_yaml(p)
    if not isinstance(cfg, dict):
        raise ConfigError([f"{p}: the top level must be a mapping"])
    pairs = parse_overrides(overrides)
    for k, v in pairs:
        if k == "preset":
            if not isinstance(v, str) or v not in PRESETS:
                raise ConfigError([f"preset: unknown preset {v!r}; known: {sorted(PRESETS)}"])
            cfg = merge(cfg, PRESETS[v])
    for k, v in pairs:
        if k != "preset":
            set_dotted(cfg, k, v)
    validate(cfg)
    return cfg


def validate(cfg: dict) -> None:
    """Raise one ConfigError (a ValueError) listing every problem; numbers are coerced in place
    (an integral float such as 1e3 where an int is wanted becomes 1000)."""
    errs = []

    def need(path, kind, required=True):
        """The value at ``path`` checked against the type ``kind`` (stored back coerced); None when
        missing or wrong. ``required=False``: a setting with a default in the code, checked only
        when given."""
        node, parent = cfg, None
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    errs.append(f"{path}: missing")
                return None
            node, parent = node[part], node
        value, problem = check_value(node, kind, path)
        if problem:
            errs.append(problem)
            return None
        parent[path.rsplit(".", 1)[-1]] = value
        return value

    def optional(path, kind):
        return need(path, kind, required=False)

    need("stage", str)
    optional("model.path", str | None)
    optional("model.init_seed", int)
    optional("data.split", str)
    optional("data.dropout", dict[str, float])
    need("train.betas", tuple[float, float])
    need("train.eps", float)
    need("train.activation_checkpointing", bool)
    shards = need("data.shards", list[str] | str)
    if isinstance(shards, list) and not shards:
        errs.append("data.shards is empty")
    tasks = need("data.tasks", list[str]) or []
    errs += [f"data.tasks: unknown task {t!r}" for t in tasks if t not in TASKS]
    for k in ("max_tokens", "max_tokens_per_sample", "num_workers"):
        need(f"data.{k}", int)
    for side in ("vae_image", "vit_image"):
        for k in ("max_size", "min_size", "stride"):
            need(f"data.{side}.{k}", int)
        optional(f"data.{side}.max_pixels", int)
    if optional("data.packing", str) not in (*RULES, None):
        errs.append(f"data.packing must be one of {RULES}")
    optional("data.expected_tokens", int | None)
    optional("data.prefer_buffer_before", int)
    optional("data.max_buffer_size", int)
    steps, warm = need("train.steps", int), need("train.warmup_steps", int)
    if isinstance(steps, int) and steps < 0:
        errs.append(f"train.steps {steps} must be >= 0")
    if isinstance(warm, int) and warm < 0:  # a warm-up longer than the run is allowed (Scone's stage 2)
        errs.append(f"train.warmup_steps {warm} must be >= 0")
    epochs = optional("train.epochs", int | None)
    if isinstance(epochs, int) and epochs < 1:
        errs.append(f"train.epochs {epochs} must be >= 1 (or null: stop after train.steps only)")
    optional("train.vae_padding", bool)
    for k in ("lr", "weight_decay", "grad_clip", "timestep_shift"):
        need(f"train.{k}", float)
    for k in ("seed", "log_every", "save_every"):
        need(f"train.{k}", int)
    if need("train.dtype", str) not in ("bf16", "fp32", None):
        errs.append("train.dtype must be bf16 or fp32")
    need("train.output_dir", str)
    need("train.trainable", list[str])
    need("train.frozen", list[str])
    if need("mask.enabled", bool):
        a, f, last = (
            need("mask.after_layer", int),
            need("mask.first_layer", int),
            need("mask.last_layer", int),
        )
        if all(isinstance(x, int) for x in (a, f, last)) and not a < f <= last:
            errs.append(
                f"mask layers must satisfy after_layer < first_layer <= last_layer, got {a}, {f}, {last}"
            )
        need("mask.threshold", float)
    if cfg.get("attention", "dense") not in ("dense", "flex"):
        errs.append("attention must be dense or flex")
    if errs:
        raise ConfigError(errs)
