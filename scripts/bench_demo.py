"""`ctrain demo` against the tutorial's work done with Keras, whole processes, side by side.

Wall-clock timings of fresh processes (each side pays its own interpreter start, imports and
TensorFlow start), run in interleaved rounds so that a noisy moment hits both sides:
  - `ctrain demo` (the default a new user runs: in this process, as no RAY_ADDRESS is
    set): old model, every strategy one by one, scored on a test split, report saved;
  - the tutorial's work in one Keras process: the old model once, then every update the
    tutorial makes (scripts/tutorial_keras.py --strategy all): the same work;
  - with --ray also `ctrain demo --ray`: the same, the strategies on Ray trainer actors (an
    embedded Ray started for it, its start charged).
The figure is the ratio of the medians. The tutorial's scripts as written (one process per
update, each re-fitting the old model, `keep` included) do more work than the demo and are
not a fair baseline; they are not measured.

Run: .venv/bin/python scripts/bench_demo.py [--rounds 3] [--ray]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_check import check, emit

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ray", action="store_true", help="also time `ctrain demo --ray`")
    args = p.parse_args()
    tutorial = [sys.executable, os.path.join(HERE, "tutorial_keras.py"), "--strategy", "all"]
    ctrain = os.path.join(BIN, "ctrain")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    seconds: dict[str, list[float]] = {"demo": [], "keras": [], "demo --ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            seconds["demo"].append(timed([ctrain, "demo", "--store", os.path.join(tmp, f"a{i}")], env))
            seconds["keras"].append(timed(tutorial))
            if args.ray:
                seconds["demo --ray"].append(
                    timed([ctrain, "demo", "--ray", "--store", os.path.join(tmp, f"r{i}")], env)
                )
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items() if v), flush=True)
    median = {k: statistics.median(v) for k, v in seconds.items() if v}
    ratio = median["keras"] / median["demo"]
    print(f"medians of {args.rounds} interleaved rounds, whole processes:")
    print(f"  ctrain demo (this process)              {median['demo']:6.1f} s")
    print(f"  the tutorial's work in one Keras process {median['keras']:6.1f} s -> demo {ratio:.1f}x faster")
    checks = [check("ctrain demo vs the tutorial's work in Keras, whole processes", ratio, 4.0, readme="demo")]
    if args.ray:
        ray_ratio = median["keras"] / median["demo --ray"]
        print(f"  ctrain demo --ray (Ray start charged)    {median['demo --ray']:6.1f} s -> {ray_ratio:.1f}x")
    emit(checks)


if __name__ == "__main__":
    main()
