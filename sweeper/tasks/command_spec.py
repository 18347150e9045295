"""The command task's declaration: `base` is the script's own settings, any key, any metric
(the runner is `sweeper.tasks.command`)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sweeper.registry import TaskSpec


class CommandBase(BaseModel):
    """`base` of the command task: the script's own fixed settings, passed like searched values."""

    model_config = ConfigDict(extra="allow", frozen=True)


SPEC = TaskSpec(
    name="command",
    base=CommandBase,
    entry="sweeper.tasks.command:CommandTrial",
    description="your own training script (Hydra, argparse, Lightning, MMDetection) as a subprocess",
    seed_key="seed",
    open_keys=True,
    uses_cuda=False,  # the script picks its device from CUDA_VISIBLE_DEVICES itself
)
