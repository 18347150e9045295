"""The noop task's declaration (pydantic only; the task is `sweeper.tasks.noop`)."""
from __future__ import annotations

from pydantic import Field

from sweeper.registry import Strict, TaskSpec, TrainBase


class NoopTrain(TrainBase):
    epochs: int = Field(1, ge=1, description="epochs (reports) per trial")
    sleep_s: float = Field(0.0, ge=0, description="seconds each epoch pretends to train")
    seed: int = Field(0, description="seeds `train.noise`; unused while noise is 0 (the objective is then deterministic)")
    noise: float = Field(0.0, ge=0, allow_inf_nan=False, description="seed noise: the score gets noise * N(0, 1), "
                         "drawn from (train.seed, epoch, x, y), so seeds differ as in real training (`sweeper "
                         "confirm` tests); 0 = none")


class NoopBase(Strict):
    x: float = Field(0.5, description="a parameter to search; the score peaks at x = 0.3")
    y: float = Field(0.5, description="a parameter to search; the score peaks at y = 0.7")
    train: NoopTrain = NoopTrain()


SPEC = TaskSpec(
    name="noop",
    base=NoopBase,
    entry="sweeper.tasks.noop:NoopTask",
    description="trains nothing: a known objective of x and y, for load tests and driver benchmarks",
    metrics=("score", "cost", "train/loss"),  # cost = x + y: something for `constraints` to bound
    leaderboard_columns=("train/loss",),
    uses_cuda=False,  # trains nothing: runs anywhere, reporting the GPUs Ray assigned (scheduling tests)
)
