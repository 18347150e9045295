"""A script whose objective curve is a known function of its parameter, for `sweeper diagnose`.

    python curve_by_param.py --q 0.7 --epochs 4 [--flip 2]

Prints `SWEEPER_METRICS {"epoch": e, "val/acc": ...}` for e = 1..epochs (standard library only,
no training). Before epoch `--flip` the trials rank in the reverse of their final order (a high
`q` starts slow: a late bloomer); from `--flip` on they rank by `q`, as at the end. So the rank
correlation with the last epoch is -1 before `--flip` and 1 from it on.
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--q", type=float, required=True, help="the configuration's quality, in [0, 1]")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--flip", type=int, default=2, help="the first epoch that ranks trials as the last does")
    args = ap.parse_args()
    for epoch in range(1, args.epochs + 1):
        value = 0.3 - 0.2 * args.q if epoch < args.flip else 0.4 + 0.5 * args.q + 0.01 * epoch
        print(f"SWEEPER_METRICS {json.dumps({'epoch': epoch, 'val/acc': round(value, 6)})}", flush=True)


if __name__ == "__main__":
    main()
