"""A script that trains for a number of steps and validates every 50 (`command.time_key: step`).

    python train_steps.py --lr 0.05 --steps 300 [--log_every 50] [--stop_at 150] [--plateau_after 100]

Trains a small MLP on a fixed random problem with plain PyTorch and prints, as a step-based
training loop logs, `SWEEPER_METRICS {"step": S, "train/loss": ...}` every 10 steps and
`SWEEPER_METRICS {"step": S, "val/acc": ..., "val/loss": ...}` every `--log_every` steps (the
records carry `step`, never `epoch`). It saves and resumes `$SWEEPER_CHECKPOINT_DIR/last.pt`.
For the sweeper's tests: `--stop_at S` ends the script itself (exit 0) after validating step S,
as a script with its own early stopping does; `--plateau_after S` freezes the weights from step
S on, so the validation metrics stop changing (patience ends such a trial); `--linger T` waits T
seconds before exiting (writing final artifacts), so its last report is taken before it ends.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn


def emit(record: dict) -> None:
    print(f"SWEEPER_METRICS {json.dumps(record)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--log_every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per validation interval")
    ap.add_argument("--stop_at", type=int, default=0, help="exit 0 after validating this step (0: never)")
    ap.add_argument("--plateau_after", type=int, default=0, help="freeze the weights from this step on (0: never)")
    ap.add_argument("--linger", type=float, default=0.0, help="seconds to wait before exiting")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(1234)  # the problem is fixed; --seed only seeds training
    x, xv = torch.randn(512, 8, generator=g), torch.randn(256, 8, generator=g)
    y, yv = (x[:, :2].sum(1) > 0).long(), (xv[:, :2].sum(1) > 0).long()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    ckpt_dir = os.environ.get("SWEEPER_CHECKPOINT_DIR")
    start = 1
    if ckpt_dir and (Path(ckpt_dir) / "last.pt").is_file():
        state = torch.load(Path(ckpt_dir) / "last.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"] + 1
        print(f"resuming from {ckpt_dir}/last.pt at step {start}")

    for step in range(start, args.steps + 1):
        i = (step * 32) % len(x)
        loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        if not (args.plateau_after and step > args.plateau_after):
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 10 == 0:
            emit({"step": step, "train/loss": loss.item()})
        if step % args.log_every:
            continue
        with torch.no_grad():
            logits = model(xv)
            val_loss = nn.functional.cross_entropy(logits, yv).item()
            acc = (logits.argmax(1) == yv).float().mean().item()
        time.sleep(args.sleep)
        if ckpt_dir:  # save first, then report: a resumed run never repeats a reported step
            tmp = Path(ckpt_dir) / "last.pt.tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
            os.replace(tmp, Path(ckpt_dir) / "last.pt")
        emit({"step": step, "val/acc": acc, "val/loss": val_loss})
        if args.stop_at and step >= args.stop_at:
            print(f"early stop at step {step}: validation has stopped improving")
            break
    time.sleep(args.linger)


if __name__ == "__main__":
    main()
