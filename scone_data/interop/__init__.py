"""Interop with the Scone/BAGEL ecosystem and a corpus viewer.

- :mod:`.export`: shards -> Scone's training parquet (+ parquet_info) and SconeEval's jsonl.
- :mod:`.imports` (+ :mod:`.convert`, one row -> one sample): Scone-S2I-style parquet and
  X2I/MUSAR/UNO-style jsonl -> our shards.
- :mod:`.hf`: features for Hugging Face ``datasets``' WebDataset loader.
- :mod:`.inspect_html`: one self-contained HTML report of an output.
- :mod:`.cli`: ``add_interop_parsers(subparsers)`` adds ``export``, ``import``, ``inspect``.
"""
