"""Pipeline stages: plain callable classes run in-process or as Ray Data actor pools."""

from scone_data.stages.base import OK, REJECTED, Stage, StageStats

__all__ = ["OK", "REJECTED", "Stage", "StageStats"]
