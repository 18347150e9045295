"""Stands in for an RVT-style event-camera detector's `train.py` in tests: the same command line
(Hydra `key=value` words, `+group=option` additions, unknown groups such as `model=rnndet` or
`dataset=gen1` accepted and ignored) and a step-based loop that validates every
`validation.val_check_interval` steps, reporting per-class AP and AP_small as the team's
validation hook does:

    python train.py model=rnndet dataset=gen1 training.max_steps=200 \
        training.learning_rate=0.002 validation.val_check_interval=50

prints `SWEEPER_METRICS {"step": S, "train/loss": ...}` every 10 steps and `SWEEPER_METRICS
{"step": S, "val/mAP": ..., "val/mAP_small": ..., "val/AP/car": ..., "val/AP/pedestrian": ...}`
per validation (records carry `step`, never `epoch`). A small MLP on a fixed random two-class
problem ("car", "pedestrian"; a third of the samples "small", i.e. noisier) stands in for the
recurrent detector; the "AP"s are per-class accuracies. Saves and resumes
`$SWEEPER_CHECKPOINT_DIR/last.pt`. No event data, no GPU, seconds on a CPU.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

DEFAULTS = {"training.max_steps": 200, "training.learning_rate": 0.05, "batch_size.train": 32,
            "validation.val_check_interval": 50, "seed": 0}


def emit(record: dict) -> None:
    print(f"SWEEPER_METRICS {json.dumps(record)}", flush=True)


def parse(words: list[str]) -> dict:
    cfg = dict(DEFAULTS)
    for word in words:
        key, _, value = word.lstrip("+").partition("=")
        if key in cfg:
            cfg[key] = type(DEFAULTS[key])(float(value)) if isinstance(DEFAULTS[key], int) else float(value)
    return cfg


def main() -> None:
    cfg = parse(sys.argv[1:])
    g = torch.Generator().manual_seed(1234)
    x, xv = torch.randn(512, 8, generator=g), torch.randn(256, 8, generator=g)
    small_v = torch.arange(256) % 3 == 0
    xv[small_v] += 0.8 * torch.randn(int(small_v.sum()), 8, generator=g)
    y, yv = (x[:, :2].sum(1) > 0).long(), (xv[:, :2].sum(1) > 0).long()
    torch.manual_seed(cfg["seed"])
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=cfg["training.learning_rate"])
    ckpt_dir = os.environ.get("SWEEPER_CHECKPOINT_DIR")
    start = 1
    if ckpt_dir and (Path(ckpt_dir) / "last.pt").is_file():
        state = torch.load(Path(ckpt_dir) / "last.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"] + 1
    bs, every = cfg["batch_size.train"], cfg["validation.val_check_interval"]
    for step in range(start, cfg["training.max_steps"] + 1):
        i = (step * bs) % len(x)
        loss = nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0:
            emit({"step": step, "train/loss": loss.item()})
        if step % every:
            continue
        with torch.no_grad():
            hit = (model(xv).argmax(1) == yv).float()
        per_class = {name: hit[yv == c].mean().item() for c, name in enumerate(("car", "pedestrian"))}
        if ckpt_dir:  # save first, then report
            tmp = Path(ckpt_dir) / "last.pt.tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, Path(ckpt_dir) / "last.pt")
        emit({"step": step, "val/mAP": sum(per_class.values()) / 2, "val/mAP_small": hit[small_v].mean().item(),
              **{f"val/AP/{k}": v for k, v in per_class.items()}})


if __name__ == "__main__":
    main()
