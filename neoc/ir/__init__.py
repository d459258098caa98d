"""The pipeline IR: one torch.fx graph for the whole text-to-video pipeline."""

from neoc.ir.schedule import PipelineSpec, Schedule
from neoc.ir.pipeline import Pipeline

__all__ = ["Pipeline", "PipelineSpec", "Schedule"]
