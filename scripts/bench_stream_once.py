"""A drifting stream of daily files, one `ctrain stream --once` process per file, by trigger.

How a scheduler (cron, Airflow) drives the stream: every day a file arrives in the inbox and
one process handles it. Two synthetic streams of 30 daily files x 500 rows after a first
batch of 1,000 (`bench_drift.py`'s abrupt drift at file 15 and gradual drift over files
10-20: a new concept and moved features), seed 0, policy `finetune_new`, candidates judged
on the new batches (`--promote-on new`), in this process (`--local`), three triggers:
never updating (`--policy keep`, which runs on every file), `--trigger always`, `--trigger
performance`. Each side pays the same per-file process start; the store is made once and
copied. A file whose trigger stays quiet costs what `ctrain predict` on it costs (the model is
a plain Dense stack, scored without TensorFlow: `trainer.light`); one that fires imports
TensorFlow and trains.

Printed per trigger: the wall time of all its per-file processes, the prequential accuracy
(the current model on each file before any update, mean over files and both streams), its
gain over never updating, and the ratios of `performance` to `always`: wall time (target at
most 50 %) and accuracy gain (target at least 95 %).

Run: .venv/bin/python scripts/bench_stream_once.py [--files 30] [--rows 500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import bench_drift
import numpy as np
from bench_check import check, emit
from bench_drift import stream_files

CTRAIN = os.path.join(os.path.dirname(sys.executable), "ctrain")
TRIGGERS = {
    "never": ["--policy", "keep"],
    "always": ["--policy", "finetune_new", "--trigger", "always"],
    "performance": ["--policy", "finetune_new", "--trigger", "performance"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=30)
    p.add_argument("--rows", type=int, default=500, help="rows per daily file")
    args = p.parse_args()
    bench_drift.ROWS = args.rows
    seconds = {name: 0.0 for name in TRIGGERS}
    accuracy: dict[str, list[float]] = {name: [] for name in TRIGGERS}
    updates = {name: 0 for name in TRIGGERS}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("abrupt", "gradual"):
            first, files = stream_files(kind, 0)
            files = files[: args.files]
            first_path = os.path.join(tmp, f"{kind}-first.parquet")
            first.to_parquet(first_path, index=False)
            made = os.path.join(tmp, f"{kind}-store")
            init = [CTRAIN, "init", "--store", made, "--data", first_path, "--label", "y", "--epochs", "50"]
            subprocess.run(init, check=True, capture_output=True)
            for name, flags in TRIGGERS.items():
                store, inbox = os.path.join(tmp, f"{kind}-{name}"), os.path.join(tmp, f"{kind}-{name}-inbox")
                shutil.copytree(made, store)
                os.makedirs(inbox)
                for t, frame in enumerate(files):
                    frame.to_parquet(os.path.join(inbox, f"day{t:02d}.parquet"), index=False)  # the day's file
                    start = time.perf_counter()
                    out = subprocess.run(
                        [CTRAIN, "stream", "--store", store, "--inbox", inbox, "--once", "--local", "--json",
                         "--promote-on", "new", *flags],
                        check=True, capture_output=True, text=True,
                    ).stdout  # fmt: skip
                    seconds[name] += time.perf_counter() - start
                    (event,) = json.loads(out.strip().splitlines()[-1])["events"]
                    accuracy[name].append(event["drift"]["accuracy"])
                    updates[name] += event["status"] == "updated"
                print(f"  {kind} {name}: {seconds[name]:.0f} s so far", flush=True)
    mean = {name: float(np.mean(v)) for name, v in accuracy.items()}
    gain = {name: mean[name] - mean["never"] for name in TRIGGERS}
    n = len(accuracy["never"])
    print(f"\n{n} files in all (2 streams), one process each; policy finetune_new, --promote-on new")
    print(f"{'trigger':<12} {'wall s':>7} {'s/file':>7} {'updates':>8} {'accuracy':>9} {'gain':>7}")
    for name in TRIGGERS:
        print(
            f"{name:<12} {seconds[name]:7.1f} {seconds[name] / n:7.2f} {updates[name]:8d} {mean[name]:9.4f} "
            f"{gain[name]:+7.4f}"
        )
    time_share = seconds["performance"] / seconds["always"]
    gain_share = gain["performance"] / gain["always"] if gain["always"] > 0 else float("nan")
    print(f"performance / always: wall time {time_share:.0%}, accuracy gain {gain_share:.0%}")
    emit(
        [
            check("stream --once per file: performance's wall time / always's", time_share, 0.5, "", at_most=True),
            check("stream --once per file: performance's accuracy gain / always's", gain_share, 0.95, ""),
        ]
    )


if __name__ == "__main__":
    main()
