#!/usr/bin/env python3
"""Import time: ``python -c "import cyllama"`` against ``python -c "import numpy"`` and a bare start.

Each command runs in a fresh interpreter, interleaved and repeated; the script prints the median
wall time of each and cyllama's time over the bare interpreter's (target: ``import cyllama``
<= 150 ms in all). Bytecode caching is left on, as users have it.

    python benchmarks/bench_import.py [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMMANDS = {
    "python (bare)": "pass",
    "import numpy": "import numpy",
    "import cyllama": "import cyllama",
}


def timed(code: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for code in COMMANDS.values():  # warm the bytecode caches and the page cache
        timed(code, env)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.reps):
        for name, code in COMMANDS.items():
            times[name].append(timed(code, env))
    print(f"{'command':<16} {'min ms':>8} {'median ms':>10} {'max ms':>8}")
    for name, ts in times.items():
        print(f"{name:<16} {min(ts) * 1e3:8.1f} {statistics.median(ts) * 1e3:10.1f} {max(ts) * 1e3:8.1f}")
    ours = statistics.median(times["import cyllama"])
    bare = statistics.median(times["python (bare)"])
    print(f"import cyllama: {ours * 1e3:.0f} ms median ({(ours - bare) * 1e3:.0f} ms over a bare interpreter); "
          f"target <= 150 ms: {'met' if ours <= 0.150 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
