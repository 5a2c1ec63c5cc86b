"""Helpers both model families use: checkpoint loading (never runs code from a file), random
initialisation for benchmarks and equivalence tests, and the bf16 autocast switch."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def bf16_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


@contextlib.contextmanager
def cpu_threads(n: int | None, on_cpu: bool):
    """torch's intra-op threads set to ``n`` for the block when the model runs on a CPU (``on_cpu``),
    then restored; a no-op for ``n=None`` or a GPU. fp32 sums follow the thread count, so a Ray worker
    (one thread) and an in-process run (every core) give the same bytes only with one fixed count."""
    if n is None or not on_cpu:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill zero-initialised parameters (rel-pos tables, biases, ...) with N(0, 0.02) noise, seeded.

    Upstream zero-inits several tensors, which would make random-weight equivalence tests blind to
    them (a zero rel-pos table hides a wrong rel-pos implementation).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: safetensors, or a torch pickle read with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import pickle

    from scone_data.models.registry import CheckpointError

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own message suggests weights_only=False, which would run the file's code: never do that
        raise CheckpointError(
            f"{path}: refused: the file holds Python objects other than tensors ({str(e).splitlines()[0][:120]}); "
            "use an official checkpoint (`scone-data weights fetch NAME`) or a .safetensors file"
        ) from None
    return sd.get("model", sd) if isinstance(sd, dict) else sd
