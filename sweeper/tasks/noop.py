"""A task that trains nothing: what load tests and the driver benchmark sweep.

Its objective is a fixed function of two searchable numbers, `score = 1 - (x-0.3)^2 - (y-0.7)^2`,
so a search has something real to find, and an epoch costs `train.sleep_s` seconds. Everything
else a trial does (Ray scheduling, Optuna, checkpoints, MLflow) is the real thing, which is what
a 500-trial load test of the driver needs to measure.
"""
from __future__ import annotations

import time
from typing import Any

from sweeper.config.trial import as_trial_config


class NoopTask:
    def __init__(self, config: Any, device: str = "cpu") -> None:
        self.cfg = cfg = as_trial_config(config, "noop")
        self.x, self.y = cfg.x, cfg.y
        self.sleep_s = cfg.train.sleep_s
        # nothing runs on a device or in mixed precision; said anyway, as every task says it
        self.runtime: dict[str, Any] = {"device": "cuda" if str(device).startswith("cuda") else "cpu",
                                        "amp": False, "channels_last": False}

    def _distance(self) -> float:
        return (self.x - 0.3) ** 2 + (self.y - 0.7) ** 2

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        time.sleep(self.sleep_s)
        return {"train/loss": self._distance() / epoch}

    def evaluate(self) -> dict[str, float]:
        return {"score": 1.0 - self._distance()}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.y = float(state["x"]), float(state["y"])
