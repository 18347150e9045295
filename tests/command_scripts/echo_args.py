"""Writes the arguments and SWEEPER_PARAM_* variables it was given to $SWEEPER_TRIAL_DIR/args.json,
then reports two epochs: for the tests of keys and values no shell may see unquoted."""
from __future__ import annotations

import json
import os
import sys

with open(os.path.join(os.environ["SWEEPER_TRIAL_DIR"], "args.json"), "w") as fh:
    json.dump({"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("SWEEPER_PARAM_")}},
              fh)
for epoch in (1, 2):
    print("SWEEPER_METRICS " + json.dumps({"epoch": epoch, "score": 0.5 * epoch}), flush=True)
