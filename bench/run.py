#!/usr/bin/env python3
"""Run every benchmark in bench/ (each *_bench.py), one after the other: `make bench`.

Each benchmark compares sdcloud with the tool a user would otherwise use, side by side in one run,
and prints ratios. Pass names to run only some: `python bench/run.py model_sync`.
"""

import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent


def main(argv):
    wanted = set(argv[1:])
    benches = sorted(p for p in HERE.glob("*_bench.py") if not wanted or p.name.removesuffix("_bench.py") in wanted)
    if not benches:
        print("no benchmark matches %s; have: %s" % (sorted(wanted), [p.name for p in HERE.glob("*_bench.py")]))
        return 2
    failed = 0
    for bench in benches:
        print("=== %s" % bench.name, flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, str(bench)], check=False).returncode
        print("=== %s: rc=%d in %.0fs\n" % (bench.name, rc, time.monotonic() - t0), flush=True)
        failed |= rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
