"""Profile validation throughput: 1,000 resources against their profiles, resources/second.

The resources are the IOP examples in profiles/examples/ (every IOP profile: clients,
episodes, plans, goals, sessions, referrals, tasks, discharge summaries, medication
handoff messages, Part 2 consents), cycled to 1,000 and each given its own id, so every
validation walks a distinct resource. Profiles are compiled before timing starts (as a
running server would have them); the figure is the steady-state rate of
``ProfileValidator.validate`` in one thread.

    python benchmarks/validate.py [--count N] [--target 500]

Exit status 1 when the rate is below the target.
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhirgw.validation import ProfileValidator  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--target", type=float, default=500.0)
    args = ap.parse_args()

    examples = [json.loads(p.read_text()) for p in sorted((ROOT / "profiles" / "examples").glob("*.json"))]
    resources = []
    for i in range(args.count):
        r = copy.deepcopy(examples[i % len(examples)])
        r["id"] = f"bench-{i}"
        resources.append(r)

    t0 = time.perf_counter()
    validator = ProfileValidator()
    for r in examples:  # compile every profile once, outside the timed loop
        validator.validate(r)
    setup = time.perf_counter() - t0

    errors = 0
    t0 = time.perf_counter()
    for r in resources:
        errors += sum(1 for i in validator.validate(r) if i.severity == "error")
    elapsed = time.perf_counter() - t0
    rate = len(resources) / elapsed
    print(f"profile validation: {len(resources)} resources ({len(examples)} IOP profiles) "
          f"in {elapsed:.2f}s = {rate:,.0f} resources/s (setup and compilation {setup:.2f}s, "
          f"errors {errors})")
    if errors:
        print("unexpected errors: the examples must be valid", file=sys.stderr)
        return 1
    if rate < args.target:
        print(f"below the target of {args.target:,.0f} resources/s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
