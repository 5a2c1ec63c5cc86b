"""Stage configs: one YAML per stage, `key=value` overrides, presets, and validation of every field.

Overrides use dotted keys (`train.steps=5`, `data.shards=[a,b]`), values parsed as YAML.
`preset=tiny` merges the tiny model/data sizes below before the other overrides are applied.
"""

import copy
from pathlib import Path

import yaml
from scone_train.data import TASKS

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


def set_dotted(cfg: dict, key: str, value) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """YAML file (or the name of a bundled config) + `key=value` overrides -> validated dict."""
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    cfg = yaml.safe_load(p.read_text())
    pairs = []
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r} is not key=value")
        k, v = o.split("=", 1)
        pairs.append((k.strip(), _parse(v)))
    for k, v in pairs:
        if k == "preset":
            if v not in PRESETS:
                raise ValueError(f"unknown preset {v!r}; known: {sorted(PRESETS)}")
            cfg = merge(cfg, PRESETS[v])
    for k, v in pairs:
        if k != "preset":
            set_dotted(cfg, k, v)
    validate(cfg)
    return cfg


def _parse(v: str):
    """YAML value; also reads 1e-3 as a float (YAML 1.1 would keep it a string)."""
    out = yaml.safe_load(v)
    if isinstance(out, str):
        try:
            return float(out)
        except ValueError:
            pass
    return out


def validate(cfg: dict) -> None:
    """Raise one ValueError listing every problem."""
    errs = []

    def need(path, kind):
        node = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                errs.append(f"missing {path}")
                return None
            node = node[part]
        if not isinstance(node, kind):
            names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            errs.append(f"{path} must be {names}, got {node!r}")
        return node

    need("stage", str)
    shards = need("data.shards", (list, str))
    if isinstance(shards, list) and not shards:
        errs.append("data.shards is empty")
    tasks = need("data.tasks", list) or []
    errs += [f"data.tasks: unknown task {t!r}" for t in tasks if t not in TASKS]
    for k in ("max_tokens", "max_tokens_per_sample", "num_workers"):
        need(f"data.{k}", int)
    for side in ("vae_image", "vit_image"):
        for k in ("max_size", "min_size", "stride"):
            need(f"data.{side}.{k}", int)
    steps, warm = need("train.steps", int), need("train.warmup_steps", int)
    if isinstance(steps, int) and isinstance(warm, int) and not 0 <= warm <= steps:
        errs.append(f"train.warmup_steps {warm} must be in [0, train.steps={steps}]")
    for k in ("lr", "weight_decay", "grad_clip", "timestep_shift"):
        need(f"train.{k}", (int, float))
    for k in ("seed", "log_every", "save_every"):
        need(f"train.{k}", int)
    if need("train.dtype", str) not in ("bf16", "fp32"):
        errs.append("train.dtype must be bf16 or fp32")
    need("train.output_dir", str)
    need("train.trainable", list)
    need("train.frozen", list)
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
        need("mask.threshold", (int, float))
    if cfg.get("attention", "dense") not in ("dense", "flex"):
        errs.append("attention must be dense or flex")
    if errs:
        raise ValueError("invalid config:\n  " + "\n  ".join(errs))
