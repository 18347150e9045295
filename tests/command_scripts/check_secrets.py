"""Reports how many secrets it was given, without ever printing or writing one: for the test that
secrets reach the trial's process and nothing else (tests/e2e/test_secrets.py).

    check_secrets.py DIGESTS [overrides...]

DIGESTS: comma-separated groups of sha256 hex digests, a group's alternatives joined by ':' (a
searched secret: one of its values). A group counts as received when the digest of one of the
words on the command line (whole, or after its first '='), or of one environment variable's
value, is in it. Reports `received` (the number of groups received) for one epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

groups = [set(group.split(":")) for group in sys.argv[1].split(",")]
candidates = set(os.environ.values())
for word in sys.argv[2:]:
    candidates.update({word, word.partition("=")[2]})
digests = {hashlib.sha256(value.encode()).hexdigest() for value in candidates}
received = sum(bool(group & digests) for group in groups)
print("SWEEPER_METRICS " + json.dumps({"epoch": 1, "received": received}), flush=True)
