"""Interop with the Scone/BAGEL ecosystem and a corpus viewer.

- :mod:`.export`: shards -> Scone's training parquet (+ parquet_info, and the text to paste into
  Scone; :mod:`.scone_layout` cuts the row groups for Scone's rank/worker split) and SconeEval's jsonl.
- :mod:`.imports` (+ :mod:`.convert`, one row -> one sample): Scone-S2I-style parquet, X2I jsonl, UNO
  JSON arrays and other layouts (detected from the rows) -> our shards.
- :mod:`.hf`: features for Hugging Face ``datasets``' WebDataset loader.
- :mod:`.inspect_html`: one self-contained HTML report of an output.
- :mod:`.cli`: ``add_interop_parsers(subparsers)`` adds ``export``, ``import``, ``inspect``.
"""
