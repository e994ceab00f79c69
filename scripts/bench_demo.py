"""`ctrain demo` against the tutorial's sequential Keras scripts doing the same work.

Wall-clock timings of fresh processes, run one after another:
  - `ctrain demo`: old model, all nine strategies in parallel on Ray trainer actors
    (an embedded Ray started on demand), scored on a test split, report saved;
  - `ctrain demo --local`: the same, the strategies one by one in one process;
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


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--no-per-script", action="store_true")
    args = p.parse_args()
    sys.path.insert(0, HERE)
    from tutorial_keras import STRATEGIES

    tutorial = [sys.executable, os.path.join(HERE, "tutorial_keras.py"), "--strategy"]
    with tempfile.TemporaryDirectory() as tmp:
        demo = timed([os.path.join(BIN, "ctrain"), "demo", "--store", os.path.join(tmp, "store")])
    one_process = timed([*tutorial, "all"])
    print(f"ctrain demo (9 strategies + old model, one process): {demo:7.1f} s")
    print(
        f"tutorial work in one Keras process:                   {one_process:7.1f} s  "
        f"-> demo takes {demo / one_process:.2f} of it ({one_process / demo:.1f}x faster)"
    )
    if not args.no_per_script:
        scripts = sum(timed([*tutorial, name]) for name in STRATEGIES)
        print(
            f"tutorial scripts as written (9 processes):            {scripts:7.1f} s  "
            f"-> demo takes {demo / scripts:.2f} of it ({scripts / demo:.1f}x faster)"
        )


if __name__ == "__main__":
    main()
