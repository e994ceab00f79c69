"""`ctrain demo` against the tutorial's sequential Keras scripts doing the same work.

Wall-clock timings of fresh processes, run one after another:
  - `ctrain demo` (the default a new user runs: in this process, as no RAY_ADDRESS is
    set): old model, all nine strategies one by one, scored on a test split, report saved;
  - `ctrain demo --ray`: the same, the strategies in parallel on Ray trainer actors
    (an embedded Ray started on demand);
  - the tutorial's work in one Keras process: the old model once, then every update
    (scripts/tutorial_keras.py --strategy all): the strict same-work baseline;
  - the tutorial's scripts as written, one process per strategy, each refitting the
    old model (skip with --no-per-script).

Run: .venv/bin/python scripts/bench_demo.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-per-script", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from tutorial_keras import STRATEGIES

    tutorial = [sys.executable, os.path.join(HERE, "tutorial_keras.py"), "--strategy"]
    ctrain = os.path.join(BIN, "ctrain")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        demo = {
            "ctrain demo (default: this process)": timed([ctrain, "demo", "--store", os.path.join(tmp, "a")], env),
            "ctrain demo --ray (Ray actors)": timed([ctrain, "demo", "--ray", "--store", os.path.join(tmp, "r")], env),
        }
    baselines = {"tutorial's work in one Keras process": timed([*tutorial, "all"])}
    if not args.no_per_script:
        baselines["tutorial's 9 scripts as written"] = sum(timed([*tutorial, name]) for name in STRATEGIES)
    for name, seconds in {**demo, **baselines}.items():
        print(f"{name:40} {seconds:7.1f} s")
    for d, ds in demo.items():
        for b, bs in baselines.items():
            print(f"{d} / {b}: {ds / bs:.2f} ({bs / ds:.1f}x faster)")


if __name__ == "__main__":
    main()
