"""Drift triggers on synthetic streams: false alarms, detection delay, accuracy per training second.

Four streams of 30 labelled files (500 rows, 10 numeric features, two classes) after a
first batch of 1,000 rows, over `--seeds` seeds:
- stationary: one concept (a random hyperplane with 10% label noise), features N(0, 1);
- abrupt: at file 15 a new concept, and the features' means move by 0.8 on three columns;
- gradual: between files 10 and 20 each row comes from the new concept (and moved
  features) with a probability rising from 0 to 1;
- recurring: concept A for files 0-9, B (moved features) for 10-19, A again for 20-29.

Each stream runs through the Python API (`ModelStore.stream`, the same code as `ctrain
stream`) with the policy `finetune_new`, candidates judged on the new batches' holdout
(`promote_on="new"`), and one trigger setting: never updating (`keep`), `always`,
`every` (its default, every 5 files), `performance` (with and without its `grow` rule),
`features`, or both (`any`).

Printed per trigger: drift alarms on the stationary stream (files where it fired claiming a
drift, of 30; the worst seed) and all the files where it fired there (mean over seeds; the
`performance` trigger also updates when the data doubled, or after an update that paid),
detection delay on the abrupt drift (files after the drift before its first drift alarm; 0
is the first drifted file), prequential accuracy (the current model's accuracy on each file before
any update, averaged over the files and streams), its gain over `keep`, the seconds spent
training and the wall-clock time per file.

Run: .venv/bin/python scripts/bench_drift.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FILES, ROWS, FEATURES, DRIFT_AT = 30, 500, 10, 15
STREAMS = ("stationary", "abrupt", "gradual", "recurring")
SETTINGS = {
    "keep": ("keep", "always", {}),
    "always": ("finetune_new", "always", {}),
    "every": ("finetune_new", "every", {}),
    "performance": ("finetune_new", "performance", {}),
    "performance grow=0": ("finetune_new", "performance", {"grow": 0}),
    "features": ("finetune_new", "features", {}),
    "performance,features": ("finetune_new", "performance,features", {}),
}


def concept(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=FEATURES)


def rows(n: int, w: np.ndarray, shift: float, rng: np.random.Generator) -> pd.DataFrame:
    x = rng.normal(size=(n, FEATURES))
    x[:, :3] += shift
    score = (x - np.r_[np.full(3, shift), np.zeros(FEATURES - 3)]) @ w
    y = (score > 0).astype(np.int64)
    noise = rng.random(n) < 0.1
    y[noise] = 1 - y[noise]
    frame = pd.DataFrame(x.astype(np.float32), columns=[f"x{i}" for i in range(FEATURES)])
    frame["y"] = y
    return frame


def stream_files(kind: str, seed: int) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    rng = np.random.default_rng(seed)
    a, b = concept(rng), concept(rng)
    first = rows(1000, a, 0.0, rng)
    files = []
    for t in range(FILES):
        if kind == "stationary":
            files.append(rows(ROWS, a, 0.0, rng))
        elif kind == "abrupt":
            files.append(rows(ROWS, b, 0.8, rng) if t >= DRIFT_AT else rows(ROWS, a, 0.0, rng))
        elif kind == "gradual":
            p = float(np.clip((t - 10) / 10, 0, 1))
            new = rng.random(ROWS) < p
            old_part, new_part = rows(ROWS, a, 0.0, rng), rows(ROWS, b, 0.8, rng)
            files.append(pd.concat([old_part[~new], new_part[new]], ignore_index=True))
        else:
            files.append(rows(ROWS, b, 0.8, rng) if 10 <= t < 20 else rows(ROWS, a, 0.0, rng))
    return first, files


def alarm(decision: dict) -> bool:
    """A drift alarm: a trigger fired, and not only by the performance trigger's rules that do
    not claim a drift (`follow`: after a paying update; `grow`: the data doubled)."""
    because = set(decision.get("because") or ())
    return bool(decision["fire"]) and (not because or bool(because & {"rise", "page_hinkley"}))


def run(kind: str, setting: str, seed: int, workdir: str) -> dict:
    import continual_trainer as ct

    policy, trigger, trigger_params = SETTINGS[setting]
    first, files = stream_files(kind, seed)
    root = os.path.join(workdir, f"{kind}-{setting.replace(',', '+').replace(' ', '-').replace('=', '')}-{seed}")
    inbox = os.path.join(root, "inbox")
    os.makedirs(inbox)
    for t, frame in enumerate(files):
        frame.to_parquet(os.path.join(inbox, f"f{t:02d}.parquet"), index=False)
    store = ct.init_store(os.path.join(root, "store"), first, "y", epochs=50, seed=seed)
    start = time.perf_counter()
    events = store.stream(
        inbox, policy=policy, trigger=trigger, trigger_params=trigger_params, promote_on="new", seed=seed
    )
    seconds = time.perf_counter() - start
    shutil.rmtree(root, ignore_errors=True)
    fired = [any(d["fire"] for d in e["triggers"].values()) for e in events]
    alarms = [any(alarm(d) for d in e["triggers"].values()) for e in events]
    after = [t for t in range(DRIFT_AT, FILES) if alarms[t]]
    return {
        "accuracy": float(np.mean([e["drift"]["accuracy"] for e in events])),
        "alarms": int(sum(alarms)),
        "fired": int(sum(fired)),
        "delay": (after[0] - DRIFT_AT) if after else None,
        "train_seconds": float(sum(c.get("seconds", 0.0) for e in events for c in e["candidates"])),
        "seconds_per_file": seconds / len(events),
        "updates": sum(e["status"] == "updated" for e in events),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", help="settings separated by ';' (keep and always are always run)")
    args = p.parse_args()
    if args.only:
        wanted = {"keep", "always", *args.only.split(";")}
        for name in [n for n in SETTINGS if n not in wanted]:
            del SETTINGS[name]
    results: dict[tuple[str, str], list[dict]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for setting in SETTINGS:
            for kind in STREAMS:
                results[(setting, kind)] = [run(kind, setting, seed, workdir) for seed in range(args.seeds)]
            print(f"  ran {setting} ({time.perf_counter() - start:.0f} s)", flush=True)
    keep = np.mean([r["accuracy"] for k in STREAMS for r in results[("keep", k)]])
    always_gain = np.mean([r["accuracy"] for k in STREAMS for r in results[("always", k)]]) - keep
    always_train = np.mean([r["train_seconds"] for k in STREAMS for r in results[("always", k)]])
    print(
        f"\n{FILES} files x {ROWS} rows per stream, {args.seeds} seeds; policy finetune_new, promote_on=new\n"
        f"{'trigger':<22} {'stationary alarms':>17} {'fired':>5} {'abrupt delay':>13} "
        + " ".join(f"{k[:10]:>10}" for k in STREAMS)
        + f" {'mean acc':>9} {'gain':>6} {'of always':>9} {'train s':>8} {'of always':>9} {'s/file':>7} {'updates':>8}"
    )
    for setting in SETTINGS:
        rs = results
        alarms = [r["alarms"] for r in rs[(setting, "stationary")]]
        fired = [r["fired"] for r in rs[(setting, "stationary")]]
        delays = [r["delay"] for r in rs[(setting, "abrupt")]]
        per_stream = [np.mean([r["accuracy"] for r in rs[(setting, k)]]) for k in STREAMS]
        mean_acc = float(np.mean(per_stream))
        gain = mean_acc - keep
        train = float(np.mean([r["train_seconds"] for k in STREAMS for r in rs[(setting, k)]]))
        per_file = float(np.mean([r["seconds_per_file"] for k in STREAMS for r in rs[(setting, k)]]))
        updates = float(np.mean([r["updates"] for k in STREAMS for r in rs[(setting, k)]]))
        delay = "never" if any(d is None for d in delays) else f"{max(delays)} (max)"
        if setting == "keep":  # never updates: its trigger is irrelevant
            alarms, fired, delay = [0], [0], "n/a"
        share = f"{gain / always_gain:9.0%}" if always_gain > 0 else f"{'n/a':>9}"
        train_share = f"{train / always_train:9.0%}" if always_train > 0 else f"{'n/a':>9}"
        print(
            f"{setting:<22} {f'{max(alarms)}/{FILES} (max)':>17} {np.mean(fired):5.1f} {delay:>13} "
            + " ".join(f"{v:10.3f}" for v in per_stream)
            + f" {mean_acc:9.3f} {gain:+6.3f} {share} {train:8.1f} {train_share} {per_file:7.2f} {updates:8.1f}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
