"""A training script as teams write them: argparse flags, its own checkpoints, `sweeper.report`.

Trains a small MLP classifier on a fixed random problem with plain PyTorch. It resumes from
`$SWEEPER_CHECKPOINT_DIR/last.pt` when present (as a script that supports resuming does) and has
fault-injection flags for the sweeper's tests: crash once at an epoch, or fail at start.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from sweeper.report import report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per epoch (long-running tests)")
    ap.add_argument("--crash_at", type=int, default=0, help="die at this epoch, once (see --crash_marker)")
    ap.add_argument("--crash_marker", default="", help="file created by the first crash")
    ap.add_argument("--pid_file", default="", help="append this process's pid here")
    ap.add_argument("--spawn_child", type=str, default="false",
                    help="true: start a helper process (as data-loader workers are) that never exits")
    ap.add_argument("--fail", type=str, default="false", help="true: exit 1 at start with an error")
    args = ap.parse_args()
    if args.pid_file:
        with open(args.pid_file, "a") as fh:
            fh.write(f"{os.getpid()}\n")
            if args.spawn_child == "true":
                import subprocess

                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
                fh.write(f"{child.pid}\n")
    if args.fail == "true":
        print("loading dataset /data/missing.json ...")
        print("FileNotFoundError: dataset /data/missing.json does not exist", file=sys.stderr)
        sys.exit(1)

    g = torch.Generator().manual_seed(1234)  # the problem is fixed; --seed only seeds training
    x = torch.randn(512, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    xv = torch.randn(256, 8, generator=g)
    yv = (xv[:, :2].sum(1) > 0).long()
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(8, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 2))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    ckpt_dir = os.environ.get("SWEEPER_CHECKPOINT_DIR")
    start, resumed_from = 1, 0
    if ckpt_dir and (Path(ckpt_dir) / "last.pt").is_file():
        state = torch.load(Path(ckpt_dir) / "last.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = resumed_from = state["epoch"] + 1
        print(f"resuming from {ckpt_dir}/last.pt at epoch {start}")

    for epoch in range(start, args.epochs + 1):
        if epoch == args.crash_at and args.crash_marker and not Path(args.crash_marker).exists():
            Path(args.crash_marker).touch()
            print(f"simulated crash at epoch {epoch}", file=sys.stderr, flush=True)
            os._exit(3)
        model.train()
        for i in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val_loss = nn.functional.cross_entropy(logits, yv).item()
            acc = (logits.argmax(1) == yv).float().mean().item()
        time.sleep(args.sleep)
        if ckpt_dir:  # save first, then report: a resumed run never repeats a reported epoch
            tmp = Path(ckpt_dir) / "last.pt.tmp"
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, tmp)
            os.replace(tmp, Path(ckpt_dir) / "last.pt")
        report(epoch=epoch, **{"val/loss": val_loss, "val/acc": acc, "train/loss": loss.item(),
                               "resumed_from": resumed_from})


if __name__ == "__main__":
    main()
