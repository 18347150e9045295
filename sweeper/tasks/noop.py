"""A task that trains nothing: what load tests and the driver benchmark sweep.

Its objective is a fixed function of two searchable numbers, `score = 1 - (x-0.3)^2 - (y-0.7)^2`,
so a search has something real to find, and an epoch costs `train.sleep_s` seconds; `train.noise`
adds seed noise (a draw from N(0, noise^2) fixed by seed, epoch, x and y, so a rerun or a resumed
trial reports the same curve) for tests of seeds and paired statistics. Everything
else a trial does (Ray scheduling, Optuna, checkpoints, MLflow) is the real thing, which is what
a 500-trial load test of the driver needs to measure.
"""
from __future__ import annotations

import random
import time
from typing import Any

from sweeper.config.trial import as_trial_config


class NoopTask:
    def __init__(self, config: Any, device: str = "cpu") -> None:
        self.cfg = cfg = as_trial_config(config, "noop")
        self.x, self.y = cfg.x, cfg.y
        self.sleep_s = cfg.train.sleep_s
        self.seed, self.noise, self.epoch = cfg.train.seed, cfg.train.noise, 0
        # nothing runs on a device or in mixed precision; said anyway, as every task says it
        self.runtime: dict[str, Any] = {"device": "cuda" if str(device).startswith("cuda") else "cpu",
                                        "amp": False, "channels_last": False}

    def _distance(self) -> float:
        return (self.x - 0.3) ** 2 + (self.y - 0.7) ** 2

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.epoch = epoch
        time.sleep(self.sleep_s)
        return {"train/loss": self._distance() / epoch}

    def evaluate(self) -> dict[str, float]:
        score = 1.0 - self._distance()
        if self.noise:  # a string seed: the same draw in every process, on every resume
            score += self.noise * random.Random(f"{self.seed}:{self.epoch}:{self.x!r}:{self.y!r}").gauss(0.0, 1.0)
        # `cost` (x + y): a second known metric, for `constraints` (e.g. {metric: cost, max: 0.8})
        return {"score": score, "cost": self.x + self.y}

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.y = float(state["x"]), float(state["y"])
