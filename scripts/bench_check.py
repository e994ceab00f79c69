"""`make bench-check`: run the benchmarks behind the README's Speed table and exit 1 if any
figure misses its target.

Each benchmark prints, as its last line, `BENCH-CHECK {json}`: a list of checks, each the
figure measured, the target the README states and whether it was met (see `emit`). This
script runs every benchmark in turn (they are heavy: about 15 minutes on 2 cores), prints one
line per check and exits 0 only if every target is met. It is not part of `make test`: timings
belong to a quiet machine, never to an assertion in a test.

Run: .venv/bin/python scripts/bench_check.py [--only bench_loop.py,bench_sweep.py]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "BENCH-CHECK "
BENCHMARKS = (
    "bench_loop.py",
    "bench_models.py",
    "bench_demo.py",
    "bench_sweep.py",
    "bench_asha.py",
    "bench_stream.py",
    "bench_stream_once.py",
    "bench_grid.py",
    "bench_serve.py",
    "bench_serve_log.py",
    "bench_sharded.py",
    "bench_averaging.py",
    "bench_update_several.py",
)


def check(what: str, figure: float, target: float, unit: str = "x", *, at_most: bool = False) -> dict[str, Any]:
    """One figure against its target: at least `target` (a speed-up), or at most (`at_most`: a
    cost, e.g. accuracy points lost or MiB)."""
    met = figure <= target if at_most else figure >= target
    return {"what": what, "figure": round(figure, 4), "target": ("<= " if at_most else ">= ") + f"{target}{unit}",
            "met": bool(met)}  # fmt: skip


def emit(checks: list[dict[str, Any]]) -> None:
    """Print the checks as this benchmark's last line, for `bench_check.py` to read."""
    print(PREFIX + json.dumps(checks), flush=True)


def run(script: str) -> list[dict[str, Any]]:
    """The checks `script` printed, run as the README's "reproduce" column runs it."""
    proc = subprocess.run([sys.executable, os.path.join(HERE, script)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{"what": f"{script} ran", "figure": proc.returncode, "target": "exit 0", "met": False,
                 "error": tail[0][:300]}]  # fmt: skip
    return json.loads(lines[-1][len(PREFIX) :])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated scripts of the list (default: all)")
    args = p.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(BENCHMARKS)
    unknown = [s for s in chosen if s not in BENCHMARKS]
    if unknown:
        p.error(f"not a benchmark of the Speed table: {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    missed = 0
    for script in chosen:
        print(f"{script}:", flush=True)
        for c in run(script):
            missed += not c["met"]
            mark = "ok    " if c["met"] else "MISSED"
            print(
                f"  {mark} {c['what']}: {c['figure']} (target {c['target']}) {c.get('error', '')}".rstrip(), flush=True
            )
    print("every target met" if not missed else f"{missed} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
