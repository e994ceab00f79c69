"""Forgetting on continual-learning benchmarks, every strategy through the product's API.

1. Class-incremental split digits: scikit-learn's 8x8 digits (1797 images) split into five
   batches of two classes arriving in order (0-1, 2-3, ..., 8-9); a 30% test split of every
   class is kept aside. Each run: `init_store` on the first batch, then for each later batch
   `ingest(new_classes=True)` and `update(strategy, promote="always")`. Final accuracy on
   the test rows of all ten classes, mean and range over the seeds, and each run's update
   time. `naive` is fine-tuning the whole network on the new rows with a head grown for the
   new classes (`new_head freeze=0 data=new`); `joint` refits on every row so far
   (`fresh_all`), the upper bound.
   With `--select`, the paper's protocol for hyperparameters: each method's learning rate is
   chosen among the given ones on validation rows (a tenth of each training split) before the
   test runs, as Buzzega et al. grid-search every method's own.
   The same on ten synthetic classes (`--only synthetic`, scikit-learn's `make_classification`):
   a second class-incremental benchmark, to check on other data what was chosen on the digits.
2. Domain-incremental permuted digits: five batches of all ten classes, each with its own
   fixed permutation of the 64 pixels. Final accuracy averaged over the five tasks' test
   rows, and forgetting: the mean over the first four tasks of (accuracy just after
   learning the task - final accuracy).
3. Peak memory: `ctrain update` in a fresh process (peak RSS of that process) on a store of
   five batches of `--rows` rows x 20 features (four learned by `replay` updates, whose
   current version keeps a replay memory, and one new): `replay` (reads the memory and the
   old batches' holdout rows) against `finetune_all` (reads every old row), one epoch each.

Run: .venv/bin/python scripts/bench_forgetting.py [--seeds 3] [--rows 200000] [--only class|synthetic|domain|memory]
     [--methods replay,der] [--set der.alpha=1.0] [--select 0.001,0.003,0.01 [--select-seeds 3]]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BIN = os.path.dirname(sys.executable)
MODEL = "mlp:100,100"
BASE_EPOCHS = 60

CLASS_IL: dict[str, tuple[str, dict[str, str]]] = {
    "naive": ("new_head", {"freeze": "0", "data": "new"}),
    "lwf": ("lwf", {}),
    "ewc": ("ewc", {}),
    "replay": ("replay", {"memory_size": "200"}),
    "der": ("der", {"memory_size": "200"}),
    "derpp": ("derpp", {"memory_size": "200"}),
    "joint": ("fresh_all", {"epochs": str(BASE_EPOCHS)}),
}
DOMAIN_IL: dict[str, tuple[str, dict[str, str]]] = {
    "naive": ("finetune_new", {}),
    "lwf": ("lwf", {}),
    "ewc": ("ewc", {}),
    "replay": ("replay", {"memory_size": "200"}),
    "der": ("der", {"memory_size": "200"}),
    "derpp": ("derpp", {"memory_size": "200"}),
    "joint": ("fresh_all", {"epochs": str(BASE_EPOCHS)}),
}


def digits(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    frame = _frame(data.data.astype(np.float32), data.target.astype(np.int64))
    return train_test_split(frame, test_size=0.3, stratify=frame["digit"], random_state=seed)


def _frame(pixels: np.ndarray, digit: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
    """The images as one tensor column (normalised by one mean and variance over all pixels)."""
    return pd.DataFrame({"pixels": list(pixels), "digit": digit}, index=index)


def run_stream(
    batches: list[pd.DataFrame],
    tests: list[pd.DataFrame],
    strategy: str,
    params: dict[str, str],
    seed: int,
    workdir: str,
) -> tuple[list[list[float]], float]:
    """One stream through the API: the accuracy on each test set after each batch, and the
    seconds spent in updates."""
    import continual_trainer as ct

    uri = os.path.join(workdir, f"{strategy}-{seed}-{time.monotonic_ns()}")
    store = ct.init_store(uri, batches[0], "digit", model=MODEL, epochs=BASE_EPOCHS, seed=seed)
    accuracy = [_accuracies(store, tests)]
    seconds = 0.0
    for batch in batches[1:]:
        store.ingest(batch, new_classes=True)
        start = time.perf_counter()
        store.update(strategy, promote="always", seed=seed, **params)
        seconds += time.perf_counter() - start
        accuracy.append(_accuracies(store, tests))
    shutil.rmtree(uri, ignore_errors=True)
    return accuracy, seconds


def _accuracies(store, tests: list[pd.DataFrame]) -> list[float]:
    return [float((store.predict(t)["prediction"].to_numpy() == t["digit"].to_numpy()).mean()) for t in tests]


def synthetic(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ten classes of scikit-learn's `make_classification` (40 features, 20 informative, two
    clusters per class), 300 rows each, split as `digits` is: a second class-incremental
    benchmark, held out from the choices made on the digits."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(
        n_samples=3000, n_features=40, n_informative=20, n_classes=10, class_sep=2.0, random_state=seed
    )
    frame = _frame(x.astype(np.float32), y.astype(np.int64))
    return train_test_split(frame, test_size=0.3, stratify=frame["digit"], random_state=seed)


Data = Callable[[int], tuple[pd.DataFrame, pd.DataFrame]]


def class_incremental(seeds: int, workdir: str, data: Data = digits, grid: Selection | None = None) -> list[dict]:
    """Each method's final accuracy on the test rows over `seeds` runs; with `grid`, each
    method's learning rate chosen first on validation rows (see `Selection`)."""
    rows = []
    for name, (strategy, params) in CLASS_IL.items():
        if grid is not None:
            params = {**params, "learning_rate": grid.choose(name, strategy, params, data, workdir)}
        finals, times = [], []
        for seed in range(seeds):
            train, test = data(seed)
            acc, seconds = run_stream(_tasks(train), [test], strategy, params, seed, workdir)
            finals.append(acc[-1][0])
            times.append(seconds)
        rows.append(_row(name, strategy, params, finals, times))
        print(_line(rows[-1]), flush=True)
    return rows


def _tasks(train: pd.DataFrame) -> list[pd.DataFrame]:
    return [train[train.digit // 2 == k] for k in range(5)]


@dataclass(frozen=True)
class Selection:
    """The paper's protocol for hyperparameters (Buzzega et al. 2020 grid-search each method's
    own on validation rows): each method's learning rate is the one of `rates` whose final
    accuracy on validation rows (a stratified tenth of each training split, never the test
    rows) is highest on average over `seeds` runs; the test runs then train on the whole split."""

    rates: tuple[float, ...]
    seeds: int

    def choose(self, name: str, strategy: str, params: dict[str, str], data: Data, workdir: str) -> str:
        from sklearn.model_selection import train_test_split

        scores = {}
        for rate in self.rates:
            finals = []
            for seed in range(self.seeds):
                train, _ = data(seed)
                fit, val = train_test_split(train, test_size=0.1, stratify=train["digit"], random_state=seed)
                given = {**params, "learning_rate": str(rate)}
                finals.append(run_stream(_tasks(fit), [val], strategy, given, seed, workdir)[0][-1][0])
            scores[rate] = float(np.mean(finals))
        best = max(self.rates, key=lambda r: scores[r])
        said = ", ".join(f"{r:g}: {v:.3f}" for r, v in scores.items())
        print(f"  {name:<7} learning_rate on validation rows: {said} -> {best:g}", flush=True)
        return str(best)


def domain_incremental(seeds: int, workdir: str) -> list[dict]:
    rows = []
    for name, (strategy, params) in DOMAIN_IL.items():
        finals, forgets, times = [], [], []
        for seed in range(seeds):
            train, test = digits(seed)
            rng = np.random.default_rng(100 + seed)
            perms = [np.arange(64)] + [rng.permutation(64) for _ in range(4)]
            shuffled = train.sample(frac=1.0, random_state=seed)
            parts = [shuffled.iloc[idx] for idx in np.array_split(np.arange(len(shuffled)), 5)]
            batches = [_permuted(p, perm) for p, perm in zip(parts, perms, strict=True)]
            tests = [_permuted(test, perm) for perm in perms]
            acc, seconds = run_stream(batches, tests, strategy, params, seed, workdir)
            finals.append(float(np.mean(acc[-1])))
            forgets.append(float(np.mean([acc[t][t] - acc[-1][t] for t in range(4)])))
            times.append(seconds)
        row = _row(name, strategy, params, finals, times)
        row["forgetting"] = float(np.mean(forgets))
        rows.append(row)
        print(_line(row) + f"  forgetting {row['forgetting']:.3f}", flush=True)
    return rows


def _permuted(frame: pd.DataFrame, perm: np.ndarray) -> pd.DataFrame:
    pixels = np.stack(frame["pixels"].to_list())[:, perm]
    return _frame(pixels, frame["digit"].to_numpy(), frame.index)


def _row(name: str, strategy: str, params: dict[str, str], finals: list[float], times: list[float]) -> dict:
    setting = " ".join(f"{k}={v}" for k, v in params.items())
    return {
        "method": name,
        "strategy": f"{strategy} {setting}".strip(),
        "accuracy": float(np.mean(finals)),
        "low": float(np.min(finals)),
        "high": float(np.max(finals)),
        "update_seconds": float(np.mean(times)),
        "finals": finals,
    }


def _line(row: dict) -> str:
    return (
        f"  {row['method']:<7} {row['strategy']:<36} accuracy {row['accuracy']:.3f} "
        f"[{row['low']:.3f}, {row['high']:.3f}]  updates {row['update_seconds']:5.1f} s"
    )


def peak_memory(rows: int, workdir: str) -> dict[str, float]:
    """Peak RSS (MiB) of `ctrain update` processes on a store with a replay memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import make_classification

    x, y = make_classification(rows * 5, 20, n_informative=10, n_classes=4, random_state=0)
    files = []
    for k in range(5):
        part = slice(k * rows, (k + 1) * rows)
        table = pa.table({**{f"f{i}": x[part, i].astype(np.float32) for i in range(20)}, "y": y[part]})
        files.append(os.path.join(workdir, f"big{k}.parquet"))
        pq.write_table(table, files[-1])
    store = os.path.join(workdir, "big")
    ctrain = os.path.join(BIN, "ctrain")
    quick = ["--set", "epochs=1", "--set", "batch_size=1024"]
    _run(
        [ctrain, "init", "--store", store, "--data", files[0], "--label", "y", "--epochs", "1", "--batch-size", "1024"]
    )
    for file in files[1:4]:  # the first replay fills the memory from the old rows; later ones read it
        _run([ctrain, "ingest", "--store", store, file])
        _run([ctrain, "update", "--store", store, "--strategy", "replay", "--promote", "always", *quick])
    _run([ctrain, "ingest", "--store", store, files[4]])  # four old batches, one new
    out = {}
    for strategy in ("keep", "replay", "finetune_all"):  # keep: the floor (Python, TensorFlow, new rows)
        copy = f"{store}-{strategy}"
        shutil.copytree(store, copy)
        settings = quick if strategy != "keep" else []
        out[strategy] = _peak(
            [ctrain, "update", "--store", copy, "--strategy", strategy, "--promote", "never", *settings]
        )
    return out


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _peak(argv: list[str]) -> float:
    """Peak RSS of one child process, in MiB (each measured in its own helper process)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code, *argv], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rows", type=int, default=200_000, help="rows per batch in the memory comparison")
    p.add_argument("--only", choices=("class", "synthetic", "domain", "memory"), action="append")
    p.add_argument("--methods", help="a comma-separated subset of the tables' methods, e.g. replay,der")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a parameter of one method of the tables, e.g. der.alpha=1.0 (repeatable)")  # fmt: skip
    p.add_argument(
        "--select",
        metavar="RATE,RATE,...",
        help="class-incremental tables: each method's learning rate chosen among these on validation rows",
    )
    p.add_argument("--select-seeds", type=int, default=3, help="runs each rate is scored on, with --select")
    args = p.parse_args()
    grid = Selection(tuple(float(r) for r in args.select.split(",")), args.select_seeds) if args.select else None
    if args.methods:
        wanted = args.methods.split(",")
        for table in (CLASS_IL, DOMAIN_IL):
            for method in [m for m in table if m not in wanted]:
                del table[method]
    for item in args.set:
        method, _, assignment = item.partition(".")
        key, _, value = assignment.partition("=")
        for table in (CLASS_IL, DOMAIN_IL):
            table[method][1][key] = value
    parts: dict[str, Callable[[str], object]] = {
        "class": lambda w: class_incremental(args.seeds, w, digits, grid),
        "synthetic": lambda w: class_incremental(args.seeds, w, synthetic, grid),
        "domain": lambda w: domain_incremental(args.seeds, w),
        "memory": lambda w: peak_memory(args.rows, w),
    }
    titles = {
        "class": f"Class-incremental split digits (5 batches x 2 classes, {MODEL}, {args.seeds} seeds): final accuracy",
        "synthetic": f"Class-incremental synthetic classes (5 batches x 2 of make_classification's 10, {MODEL}, "
        f"{args.seeds} seeds): final accuracy",
        "domain": f"Domain-incremental permuted digits (5 permutations, {args.seeds} seeds): mean final accuracy",
        "memory": f"Peak RSS of `ctrain update`, 5 batches x {args.rows:,} rows x 20 features, one epoch",
    }
    start = time.perf_counter()
    for key in args.only or list(parts):
        print(titles[key], flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            result = parts[key](workdir)
        if key in ("class", "synthetic", "domain"):
            assert isinstance(result, list)
            _paired(result, ("der", "replay"), ("derpp", "der"), ("replay", "naive"))
        if key == "memory":
            assert isinstance(result, dict)
            for name, mib in result.items():
                print(f"  {name:<13} {mib:8.0f} MiB")
            print(f"  ratio         {result['finetune_all'] / result['replay']:8.2f}x (finetune_all / replay)")
            above = (result["finetune_all"] - result["keep"]) / max(result["replay"] - result["keep"], 1)
            print(f"  above keep's  {above:8.2f}x (each minus keep's peak)")
    print(f"total {time.perf_counter() - start:.0f} s; this process peak {_self_peak():.0f} MiB")


def _paired(rows: list[dict], *pairs: tuple[str, str]) -> None:
    """The difference of two methods' final accuracies seed by seed (same data, same test
    rows): its mean and standard error, in points."""
    finals = {row["method"]: np.asarray(row["finals"]) for row in rows}
    for a, b in pairs:
        if a in finals and b in finals:
            d = 100 * (finals[a] - finals[b])
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            print(f"  {a} - {b}: {d.mean():+.2f} points (standard error {se:.2f}, {len(d)} seeds paired)")


def _self_peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
