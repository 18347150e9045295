"""Stands in for MMDetection's `tools/train.py` in tests: the same command-line contract.

    python train.py configs/tiny.py --work-dir DIR --cfg-options optim_wrapper.optimizer.lr=0.01

It parses `--cfg-options` as MMEngine's DictAction does (key=value, ints/floats/true/false,
[a,b] lists), merges them into the Python config, trains a small MLP and writes per-epoch
scalars where MMEngine's LoggerHook writes them: `DIR/<timestamp>/vis_data/scalars.json`, with
training lines {"lr", "loss", "epoch", "iter", "step"} and validation lines {"coco/bbox_mAP",
"step": epoch}. No MMDetection needed: this checks the command line and the log format only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn


def parse_value(text: str):  # noqa: ANN201 - MMEngine DictAction semantics
    if text.startswith("[") and text.endswith("]"):
        return [parse_value(v) for v in text[1:-1].split(",") if v]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--cfg-options", nargs="+", default=[])
    args = ap.parse_args()
    cfg: dict = {}
    exec(Path(args.config).read_text(), {"dict": dict}, cfg)  # noqa: S102 - a config file, as MMEngine reads it
    for option in args.cfg_options:
        key, value = option.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parse_value(value)

    log = Path(args.work_dir) / time.strftime("%Y%m%d_%H%M%S") / "vis_data" / "scalars.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    x, xv = torch.randn(512, 8, generator=g), torch.randn(256, 8, generator=g)
    y, yv = (x[:, :2].sum(1) > 0).long(), (xv[:, :2].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, cfg["model"]["hidden"]), nn.ReLU(), nn.Linear(cfg["model"]["hidden"], 2))
    lr, bs = cfg["optim_wrapper"]["optimizer"]["lr"], cfg["train_dataloader"]["batch_size"]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg["optim_wrapper"]["optimizer"]["momentum"])
    it = 0
    with log.open("a") as fh:
        for epoch in range(1, cfg["train_cfg"]["max_epochs"] + 1):
            for i in range(0, len(x), bs):
                loss = nn.functional.cross_entropy(model(x[i:i + bs]), y[i:i + bs])
                opt.zero_grad()
                loss.backward()
                opt.step()
                it += 1
                fh.write(json.dumps({"lr": lr, "loss": loss.item(), "epoch": epoch, "iter": it, "step": it}) + "\n")
            with torch.no_grad():
                acc = (model(xv).argmax(1) == yv).float().mean().item()
            fh.write(json.dumps({"coco/bbox_mAP": acc, "data_time": 0.001, "time": 0.01, "step": epoch}) + "\n")
            fh.flush()


if __name__ == "__main__":
    main()
