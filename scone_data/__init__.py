"""scone-data: composition + distinction corpora for subject-driven image generation."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
