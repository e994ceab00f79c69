"""Out of core: peak memory and training speed of `ctrain update` on stores of millions of rows.

For each size (millions of rows × 20 float features, a linear concept with 5% label noise, in
files of 500,000 rows with row groups of 131,072 rows): a store is made with `ctrain init` on
the first file and `ctrain ingest` of the rest, then `ctrain update --strategy finetune_all
--set epochs=E --set batch_size=1024 --set patience=0 --promote never` (E from `--epochs`, 1 by
default; no early stopping, so both paths do the same work) runs on a copy of it in each mode:

- `default` (no `--memory-budget`): the path `update` picks by itself;
- `in memory` (`--memory-budget 1TiB`): every training row read into the process, as before;
- `in pieces` (`--memory-budget 1KB`): training and held-out rows read from the store a
  chunk at a time, in the process;
- `1 actor, in pieces` / `2 actors, in pieces` (`--actors 1|2` on a local Ray): the actors
  read their own row groups; two average their models every 100 steps.

Printed per size and mode: the peak resident memory of the command's process (the driver;
VmHWM, polled) and of the largest Ray worker process, the training seconds from the version's
manifest (in pieces they include reading the rows; in memory the rows were read before; with
two actors, their start, also printed: one actor is started before the clock), rows trained per
second, holdout accuracy and the whole command's seconds; then the in-pieces
path's throughput as a share of the in-memory path's, and two actors' against one's.

With `--bound`, also the averaging actors' own code without Ray: one shard trainer (of two)
alone, then two at once in two processes, each with one TensorFlow thread: what the cores allow
two actors, before Ray's rounds.

Run: .venv/bin/python scripts/bench_scale.py [--sizes 1,4] [--modes "in memory;in pieces"] [--bound]
(`--sizes 1,4,16` for the issue's figures; 16 million rows take about 1.4 GB of disk per copy.)
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_check import check, emit

FEATURES, FILE_ROWS, ROW_GROUP = 20, 500_000, 131_072
CTRAIN = [os.path.join(os.path.dirname(sys.executable), "ctrain")]  # the installed command
PIECES = ["--memory-budget", "1KB"]
EPOCHS = [1]  # set from --epochs
MODES = {
    "default": [],  # no --memory-budget: the path `update` picks by itself
    "in memory": ["--memory-budget", "1TiB"],
    "in pieces": PIECES,
    "1 actor, in pieces": [*PIECES, "--actors", "1"],
    "2 actors, in pieces": [*PIECES, "--actors", "2", "--sync-steps", "100"],
}


def write_files(folder: str, millions: float) -> list[str]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=FEATURES)
    paths = []
    total = round(millions * 1_000_000)
    per_file = min(FILE_ROWS, -(-total // 2))  # at least two files: a first batch and a new one
    for i, start in enumerate(range(0, total, per_file)):
        n = min(per_file, total - start)
        x = rng.normal(size=(n, FEATURES)).astype(np.float32)
        y = ((x @ w) > 0).astype(np.int64)
        flip = rng.random(n) < 0.05
        y[flip] = 1 - y[flip]
        table = pa.table({**{f"x{j}": x[:, j] for j in range(FEATURES)}, "label": y})
        path = os.path.join(folder, f"part{i:03d}.parquet")
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        paths.append(path)
    return paths


def _hwm(pid: int | str) -> float:
    """A process's peak resident memory so far (VmHWM), in MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")), 0.0)
    except OSError:
        return 0.0


def _ray_workers() -> list[str]:
    """Ray worker processes (their titles start with `ray::`)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read(5) == b"ray::":
                    out.append(pid)
        except OSError:
            pass
    return out


def run(argv: list[str]) -> tuple[float, str, float]:
    """Run a command: its own peak RSS in MiB, its stdout, and the largest peak RSS of a Ray
    worker process while it ran (0 without Ray)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        peak = workers = 0.0
        while proc.poll() is None:
            peak = max(peak, _hwm(proc.pid))
            workers = max([workers, *(_hwm(w) for w in _ray_workers())])
            time.sleep(0.1)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
        out.seek(0)
        return peak, out.read().decode(), workers


def measure(store: str, millions: float, mode: str) -> tuple:
    copy = f"{store}-{mode.replace(' ', '-').replace(',', '')}"
    shutil.copytree(store, copy)
    try:
        argv = [*CTRAIN, "update", "--store", copy, "--strategy", "finetune_all", "--promote", "never"]
        argv += ["--set", f"epochs={EPOCHS[0]}", "--set", "batch_size=1024", "--set", "patience=0"]
        argv += ["--json", *MODES[mode]]
        began = time.perf_counter()
        peak, out, actor_peak = run(argv)
        wall = time.perf_counter() - began
        outcome = json.loads(out)
        with open(os.path.join(copy, "models", outcome["version"], "manifest.json")) as f:
            manifest = json.load(f)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    seconds = manifest["train_seconds"]
    started = manifest.get("execution", {}).get("start_seconds", 0.0)  # averaging: the actors' start
    trained = millions * 1_000_000 * 0.8 * EPOCHS[0]
    accuracy = outcome["metrics"]["holdout_accuracy"]
    return (millions, mode, peak, actor_peak, seconds, trained / seconds, accuracy, wall, started)


SHARD = """
import sys, time
import pyarrow as pa
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
pa.set_cpu_count(1)
from continual_trainer import strategies
from continual_trainer.cluster import parallel
from continual_trainer.data.storage import Store
from continual_trainer.strategies.base import training_set
from continual_trainer.trainer.models import to_bytes
from continual_trainer.updatedata import load_update_data
from continual_trainer.versions import stored_candidate
store = Store.open(sys.argv[1])
params = strategies.get("finetune_all").make_params({"epochs": 1, "batch_size": 1024})
data = load_update_data(store, params=[params], memory_budget=1, in_pieces=True)
current = stored_candidate(store, store.current()).load()
rows, weights = training_set(data.inputs(current, 0), params)
part, w = list(parallel._parts(rows, weights, 2, 0))[int(sys.argv[2])]
parallel.pin_threads = lambda: 1  # pinned above, as Ray pins an actor's
trainer = parallel.ShardTrainer.__ray_metadata__.modified_class()  # the actor's code, in this process
trainer.begin(to_bytes(current.members[0]), part, w, params.loop_config(), 0, ("classification", 1.0))
steps, done, averaged = -(-len(part) // 1024), 0, None
began, cpu = time.perf_counter(), time.process_time()
while done < steps:
    averaged = trainer.steps(averaged, min(100, steps - done))
    done += 100
print(len(part), time.perf_counter() - began, time.process_time() - cpu)
"""


def shard_bound(store: str) -> tuple[float, float, float]:
    """Model averaging's work without Ray: one shard trainer (of two) alone, then both at once
    in two processes, each with one TensorFlow thread as an actor has. Returns the rows/s of
    one alone, the cores it used, and the rows/s of both together."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONSAFEPATH": "1"}  # the installed package, wherever run

    def start(shard: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", SHARD, store, str(shard)], stdout=subprocess.PIPE, env=env)

    alone = start(0)
    rows, seconds, cpu = (float(v) for v in alone.communicate()[0].split())
    both = [start(0), start(1)]
    outs = [[float(v) for v in p.communicate()[0].split()] for p in both]
    together = sum(o[0] for o in outs) / max(o[1] for o in outs)
    return rows / seconds, cpu / seconds, together


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1,4", help="millions of rows, comma-separated (0.25: 250,000)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of each update")
    p.add_argument("--modes", default=";".join(MODES), help="';'-separated, of: " + "; ".join(MODES))
    p.add_argument("--workdir", help="where to write the stores (default a temporary folder)")
    p.add_argument(
        "--bound", action="store_true", help="also time two averaging actors' work without Ray (what the cores allow)"
    )
    args = p.parse_args()
    EPOCHS[0] = args.epochs
    modes = args.modes.split(";")
    if unknown := [m for m in modes if m not in MODES]:
        p.error(f"unknown mode(s) {unknown}")
    base = args.workdir or tempfile.mkdtemp(prefix="bench-scale-")
    rows, bounds = [], {}
    start = time.perf_counter()
    try:
        for millions in [float(s) if "." in s else int(s) for s in args.sizes.split(",")]:
            folder = os.path.join(base, f"{millions}m")
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            files = write_files(folder, millions)
            store = os.path.join(folder, "store")
            run([*CTRAIN, "init", "--store", store, "--data", files[0], "--label", "label", "--epochs", "1"])
            run([*CTRAIN, "ingest", "--store", store, *files[1:]])
            for f in files:
                os.remove(f)
            for mode in modes:
                rows.append(measure(store, millions, mode))
                print(f"  {millions}M {mode}: driver {rows[-1][2]:.0f} MiB ({time.perf_counter() - start:.0f} s)")
            if args.bound:
                bounds[millions] = shard_bound(store)
            shutil.rmtree(folder)
    finally:
        if not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    header = (
        f"{'rows':>5} {'mode':<20} {'driver MiB':>10} {'actor MiB':>9} {'train s':>7} {'rows/s':>9} {'accuracy':>8}"
    )
    print(f"\n{header} {'update s':>8} {'of which actors start':>21}")
    for millions, mode, peak, actor_peak, seconds, speed, accuracy, wall, started in rows:
        actor = f"{actor_peak:9.0f}" if actor_peak else f"{'-':>9}"
        starting = f"{started:21.1f}" if started else f"{'-':>21}"
        line = f"{millions:>4}M {mode:<20} {peak:10.0f} {actor} {seconds:7.1f} {speed:9.0f} {accuracy:8.4f} {wall:8.1f}"
        print(f"{line} {starting}")
    by = {(r[0], r[1]): r for r in rows}
    for millions in sorted({r[0] for r in rows}):
        memory, pieces = by.get((millions, "in memory")), by.get((millions, "in pieces"))
        if memory and pieces:
            print(f"{millions}M rows: in pieces at {pieces[5] / memory[5]:.0%} of the in-memory rows/s")
        one, two = by.get((millions, "1 actor, in pieces")), by.get((millions, "2 actors, in pieces"))
        if one and two:
            gain, trained = two[5] / one[5], millions * 1_000_000 * 0.8
            running = trained / (two[4] - two[8]) / one[5]  # once started (one actor starts before the clock)
            print(
                f"{millions}M rows: 2 actors at {gain:.2f}x one actor's rows/s ({running:.2f}x once started), "
                f"accuracy {two[6] - one[6]:+.4f}"
            )
        if millions in bounds:
            alone, cores, together = bounds[millions]
            line = f"{millions}M rows, without Ray: one shard trainer {alone:,.0f} rows/s on {cores:.2f} cores; "
            line += f"two at once {together:,.0f} rows/s together"
            print(line + (f", {together / one[5]:.2f}x one actor's" if one else ""))
    print(f"total {time.perf_counter() - start:.0f} s")
    defaults = [r for r in rows if r[1] == "default"]
    emit(
        [
            check(
                f"update of a {r[0]}M-row store, by default: the driver's peak MiB",
                r[2],
                1280,
                " MiB",
                at_most=True,
                readme=f"scale.{r[0]}m.default",
            )
            for r in defaults
        ]
    )


if __name__ == "__main__":
    main()
