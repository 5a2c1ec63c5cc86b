"""The VLM verifier in the shard phase (``shards.verify``): SconeEval's judge asked of every sample.

When ``shards.verify`` is set, each shard task asks :class:`ShardVerifier` (a
:class:`~scone_data.stages.vlm.VlmVerifier` plus what to do with a rejected sample) the judge's
questions of every sample that passed the truth check, before the sample is written:

- a sample whose answers are all the expected ones is written with ``verify`` in its record (the
  answers, ``keep: true``, model and prompt provenance);
- a rejected one is dropped and counted as the pair reject ``verify:<code>`` (``on_reject: drop``:
  the build summary, the manifest's ``pair_rejects``, ``scone-data stats`` and the card show it), or
  written with ``keep: false`` and its reason (``on_reject: flag``, for a person to look at).

Each shard's stats hold the counts (``verify``: kept, flagged and dropped by reason code); finalize
sums them into the manifest's ``verify`` and the dataset card's Verifier table.

Why in the shard task and not in a VLM actor pool: the verifier reads the encoded members the task
has just made, and the task writes the sample only after the answer, so a pool would send every
sample's images through the object store and back for no gain in batching (the questions of a chunk
of samples already share ``generate`` calls). The model loads once per process (:func:`loaded`), and
Ray reuses a worker process for the shard tasks it runs, so a build loads it once per worker. On GPUs
the shard tasks then ask for the verifier's GPU share (``num_gpus``), CPU rendering included.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from scone_data.models import registry
from scone_data.stages.vlm import VlmVerifier

ON_REJECT = ("drop", "flag")
CHUNK = 16  # samples whose questions share generate calls: their images are held until then
REJECT_PREFIX = "verify:"


@dataclass
class ShardVerifier(VlmVerifier):
    """The verifier's settings in ``shards.verify`` (those of :class:`VlmVerifier`, plus these)."""

    on_reject: str = "drop"  # drop: the sample is not written (a pair reject) | flag: written, keep false
    # torch threads during generation on a CPU: fp32 sums follow the thread count, and a Ray worker
    # (one thread) must answer as the in-process run does; null: torch's default
    cpu_threads: int | None = 1

    def validate(self) -> list[str]:
        out = super().validate()
        if self.on_reject not in ON_REJECT:
            out.append(f"on_reject: {self.on_reject!r} is not one of {', '.join(ON_REJECT)}")
        if self.cpu_threads is not None and int(self.cpu_threads) < 1:
            out.append(f"cpu_threads: {self.cpu_threads} must be >= 1 (or null: torch's default)")
        return out

    def info(self) -> dict[str, Any]:
        """Provenance of the decisions (driver side): model, weights digest, prompt, on_reject."""
        from scone_data.stages.vlm import load_prompt

        prompt = load_prompt(self.prompt_name, self.prompt_version).info()
        model = self.model_info()
        return {"model": model["name"], "weights_sha256": model["weights_sha256"], **prompt,
                "on_reject": self.on_reject}  # fmt: skip

    def judge(self, samples: list[tuple[dict, dict[str, Any]]]) -> list[dict[str, Any]]:
        """:meth:`verify_many` with ``cpu_threads`` torch threads when the model runs on a CPU."""
        from scone_data.models.common import cpu_threads

        with cpu_threads(self.cpu_threads, registry.resolve_device(self.device) == "cpu"):
            return self.verify_many(samples)


_LOADED: dict[str, ShardVerifier] = {}


def loaded(v: ShardVerifier) -> ShardVerifier:
    """``v``'s settings with the model loaded, one per process (the last one asked for): each shard
    task receives a fresh copy of the settings, and must not load the model again."""
    key = repr(v)
    if key not in _LOADED:
        _LOADED.clear()  # one model held at a time
        _LOADED[key] = v
    return _LOADED[key]


def _say(x: bool | int | None) -> str | None:
    return None if x is None else ("yes" if x else "no") if isinstance(x, bool) else str(x)


def record_field(res: dict[str, Any]) -> dict[str, Any]:
    """The record's ``verify`` (schema: sample v2) from a :func:`~scone_data.stages.vlm.decide` result
    with provenance; expected and parsed answers as the words ``yes``/``no`` or a number."""
    answers = [{"kind": a["kind"], "image": a["image"], "subject": a["subject"], "question": a["question"],
                "expected": _say(a["expected"]), "answer": a["answer"], "parsed": _say(a["parsed"]),
                "ok": bool(a["ok"])} for a in res["answers"]]  # fmt: skip
    prov = ("model", "weights_sha256", "prompt", "prompt_version", "prompt_sha256")
    return {
        "keep": bool(res["keep"]),
        "reason": res["reason"],
        **{k: res[k] for k in prov},
        "answers": answers,
    }


def reason_code(reason: str) -> str:
    """``intended_missing: dog in target.jpg`` -> ``intended_missing`` (counts stay per kind)."""
    return reason.split(":", 1)[0].strip() or "rejected"


class ShardVerification:
    """One shard task's verification: samples in, (record, members) to write out, counts kept."""

    def __init__(self, verifier: ShardVerifier):
        self.v = loaded(verifier)
        self.kept = 0
        self.flagged: Counter = Counter()
        self.dropped: Counter = Counter()

    def run(self, samples: list[tuple[dict, dict[str, Any]]], rejects: Counter) -> list[tuple[dict, dict]]:
        """The samples to write, in their order, each with ``verify`` in its record; a dropped one is
        counted in ``rejects`` as ``verify:<code>``."""
        out = []
        for (rec, members), res in zip(samples, self.v.judge(samples) if samples else []):
            field = record_field(res)
            if field["keep"]:
                self.kept += 1
            else:
                code = reason_code(field["reason"])
                if self.v.on_reject == "drop":
                    self.dropped[code] += 1
                    rejects[REJECT_PREFIX + code] += 1
                    continue
                self.flagged[code] += 1
            out.append(({**rec, "verify": field}, members))
        return out

    def stats(self) -> dict[str, Any]:
        return {"kept": self.kept, "flagged": dict(sorted(self.flagged.items())),
                "dropped": dict(sorted(self.dropped.items()))}  # fmt: skip


def summary(info: dict[str, Any], shard_stats: list[dict]) -> dict[str, Any]:
    """The manifest's ``verify``: ``info`` (:meth:`ShardVerifier.info`) and the shards' counts summed."""
    kept, flagged, dropped = 0, Counter(), Counter()
    for st in shard_stats:
        v = st.get("verify") or {}
        kept += int(v.get("kept", 0))
        flagged.update(v.get("flagged", {}))
        dropped.update(v.get("dropped", {}))
    return {**info, "kept": kept, "flagged": dict(sorted(flagged.items())),
            "dropped": dict(sorted(dropped.items()))}  # fmt: skip
