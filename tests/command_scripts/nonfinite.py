"""A script whose objective diverges: epoch 1 reports a number, epoch 2 NaN or Infinity.

    python nonfinite.py --value nan|inf|minus_inf --via stdout|jsonl|csv [--out FILE]

stdout: `SWEEPER_METRICS {"epoch": 2, "score": NaN}` (JSON as Python writes it); jsonl / csv:
the same records appended to `--out`. Then it would train on: it sleeps, to be stopped.
"""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--value", default="nan")
    ap.add_argument("--via", choices=["stdout", "jsonl", "csv"], default="stdout")
    ap.add_argument("--out", default="")
    ap.add_argument("--then_sleep", type=float, default=30.0)
    args = ap.parse_args()
    value = float(args.value.replace("minus_", "-"))
    records = [{"epoch": 1, "score": 0.5, "train/loss": 1.0},
               {"epoch": 2, "score": value, "train/loss": value}]
    if args.via == "csv":
        with open(args.out, "w") as fh:
            fh.write("epoch,score,train/loss\n")
    for record in records:
        if args.via == "stdout":
            print("SWEEPER_METRICS " + json.dumps(record), flush=True)
        elif args.via == "jsonl":
            with open(args.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        else:
            with open(args.out, "a") as fh:
                fh.write(f"{record['epoch']},{record['score']},{record['train/loss']}\n")
        time.sleep(0.3)
    time.sleep(args.then_sleep)


if __name__ == "__main__":
    main()
