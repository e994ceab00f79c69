"""ASHA against the full search: the same 32 configurations, trained to the end or stopped early.

One store (scikit-learn's digits: 900 rows, then 897 more), one random search of 32
configurations (finetune_all and fresh_all, 16 learning rates each drawn from
loguniform [1e-5, 0.3], 200 epochs, seed 0), run twice in this process one after the other
on the same data, both on this machine's cores (`LocalExecutor`): once with every trial
trained to its end (the full search), once with `scheduler: asha` (defaults: reports and
every 7 epochs, reduction factor 3, rungs at 7, 21, 63 and 189 epochs). Both pay the same
reading and scoring, after one small sweep that traces the loop for both; they run twice,
interleaved (full, ASHA, ASHA, full), and the figure is the ratio of their mean wall times,
and whether ASHA's winner is the full search's (or within 0.5 accuracy points of its
holdout accuracy, both trained to the end).

Run: .venv/bin/python scripts/bench_asha.py
"""

from __future__ import annotations

import os
import tempfile
import time

from bench_check import check, emit

SEARCH = """
search: random
num_samples: 16
search_seed: 0
strategies:
  - finetune_all:
      learning_rate: {loguniform: [0.00001, 0.3]}
  - fresh_all:
      learning_rate: {loguniform: [0.00001, 0.3]}
params: {epochs: 200}
seeds: [0]
"""


def main() -> None:
    from sklearn.datasets import load_digits

    import continual_trainer as ct
    from continual_trainer.data.storage import Store
    from continual_trainer.executor import LocalExecutor
    from continual_trainer.sweep import SweepSpec, run_sweep

    root = tempfile.mkdtemp()
    digits = load_digits(as_frame=True).frame
    digits.iloc[:900].to_parquet(os.path.join(root, "a.parquet"))
    digits.iloc[900:].to_parquet(os.path.join(root, "b.parquet"))
    ct.init_store(os.path.join(root, "s"), os.path.join(root, "a.parquet"), label="target", epochs=20)
    store = Store.open(os.path.join(root, "s"))
    ct.open_store(os.path.join(root, "s")).ingest(os.path.join(root, "b.parquet"))

    warm = "strategies: [finetune_all, fresh_all]\nparams: {epochs: 2}\nscheduler: asha\n"
    run_sweep(store, LocalExecutor(), SweepSpec.parse(warm))  # traces the loop for both sides
    texts = {"full": SEARCH, "asha": SEARCH + "scheduler: asha\n"}
    times: dict[str, list[float]] = {"full": [], "asha": []}
    out = {}
    for name in ("full", "asha", "asha", "full"):
        start = time.perf_counter()
        result = run_sweep(store, LocalExecutor(), SweepSpec.parse(texts[name]))
        times[name].append(time.perf_counter() - start)
        best = result.summary()[0]
        out[name] = (sum(times[name]) / len(times[name]), result, best)
        print(
            f"{name}: {times[name][-1]:.1f} s, {result.finished} finished, {result.stopped} stopped early; "
            f"best {best['strategy']} {best['params']} holdout accuracy {best['holdout_accuracy'][0]:.4f}"
        )
    full, asha = out["full"], out["asha"]
    by_config = {(r["strategy"], r["params"]): r["holdout_accuracy"][0] for r in full[1].summary()}
    asha_pick = by_config[(asha[2]["strategy"], asha[2]["params"])]
    gap = 100 * (full[2]["holdout_accuracy"][0] - asha_pick)
    print(
        f"ASHA / full search wall time: {asha[0] / full[0]:.2f} ({asha[0]:.1f} s vs {full[0]:.1f} s); "
        f"ASHA's pick scores {asha_pick:.4f} trained to the end, {gap:.1f} points below the full search's best"
    )
    emit(
        [
            check("ASHA's wall time / the full search's", asha[0] / full[0], 0.4, "", at_most=True, readme="asha"),
            check("ASHA's pick below the full search's best (accuracy points)", gap, 0.5, "", at_most=True),
        ]
    )


if __name__ == "__main__":
    main()
