"""A sweep's results in words and pictures: each configuration's mean and spread over seeds
(ranked as promotion ranks versions), the report's Markdown, its plots and the accuracy matrix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.manifest import Manifest
from continual_trainer.plots import heatmap_png, png
from continual_trainer.trainer.evaluate import headline, rank_key
from continual_trainer.trainer.forgetting import matrix_row

if TYPE_CHECKING:
    from continual_trainer.executor import Failure
    from continual_trainer.sweep import SweepSpec

FORGETTING = ("forgetting", "backward_transfer", "negative_flip_rate")


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics a sweep records per trial: the task's two headline metrics on the whole
    holdout, the old batches' and the new batches', and ROC AUC or R² on the whole holdout."""
    first, second = headline(task)
    extra = "r2" if task == "regression" else "roc_auc"
    pairs = [f"{part}_{m}" for part in ("holdout", "old", "new") for m in (first, second)]
    return (*pairs, f"holdout_{extra}")


def summarize(records: list[dict[str, Any]], task: str = "classification") -> list[dict[str, Any]]:
    """Mean and std over seeds of each (strategy, params), ranked as promotion ranks models."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["strategy"], r["params"]), []).append(r)
    rows = []
    for (strategy, params), rs in groups.items():
        row: dict[str, Any] = {"strategy": strategy, "params": params, "seeds": len(rs)}
        for m in (*metric_names(task), *FORGETTING, "train_seconds", *_batch_keys(rs)):
            values = [r[m] for r in rs if r.get(m) is not None]
            row[m] = (float(np.mean(values)), float(np.std(values))) if values else (None, None)
        rows.append(row)

    def key(row: dict[str, Any]) -> tuple[float, float]:
        return rank_key({m: row[f"holdout_{m}"][0] for m in headline(task)})

    return sorted(rows, key=key, reverse=True)


def _batch_keys(records: list[dict[str, Any]]) -> list[str]:
    """The accuracy-matrix columns of the records, in batch order."""
    return sorted({k for r in records for k in r if k.startswith("batch_")})


def render_report(
    records: list[dict[str, Any]],
    spec: SweepSpec,
    sweep_id: str,
    plots: list[str],
    failures: list[tuple[str, Failure]] = (),  # type: ignore[assignment]
    task: str = "classification",
    stopped: list[dict[str, Any]] = (),  # type: ignore[assignment]
    total: int | None = None,
) -> str:
    def pm(v: tuple[float | None, float | None], d: int = 3) -> str:
        return "n/a" if v[0] is None else f"{v[0]:.{d}f} ± {v[1]:.{d}f}"

    first, second = headline(task)
    how = "lower RMSE, then lower MAE" if task == "regression" else "higher accuracy, then lower log loss"
    lines = [
        f"# Sweep {sweep_id}",
        "",
        f"{len(records)} of {total or spec.planned} trials finished{_stopped_words(stopped)}. "
        "Every trial is scored on the same held-out rows: "
        "`holdout` is all of them, `old` the old batches' (forgetting), `new` the new batches' (plasticity). "
        f"Mean ± std over seeds; ranked as promotion ranks versions ({how}). `forgetting`: on the worst "
        "earlier batch, the best score an earlier version in the current model's lineage reached minus the "
        "trial's; `flips`: the share of holdout rows the current model got right and the trial gets wrong.",
        "",
    ]
    name1, name2 = first.replace("_", " "), second.replace("_", " ")
    if records:
        lines += [
            f"| rank | strategy | params | seeds | holdout {name1} | old {name1} | new {name1} | holdout {name2} "
            "| forgetting | flips | train s |",
            "| ---: | --- | --- | ---: | --- | --- | --- | --- | --- | --- | ---: |",
        ]
        for i, r in enumerate(summarize(records, task), 1):
            params = r["params"] if r["params"] != "{}" else "defaults"
            lines.append(
                f"| {i} | {r['strategy']} | `{params}` | {r['seeds']} | {pm(r[f'holdout_{first}'])} | "
                f"{pm(r[f'old_{first}'])} | {pm(r[f'new_{first}'])} | {pm(r[f'holdout_{second}'])} | "
                f"{pm(r['forgetting'])} | {pm(r['negative_flip_rate'])} | {pm(r['train_seconds'], 2)} |"
            )
        lines.append("")
    if spec.asha is not None:
        lines += [
            f"## Stopped early by ASHA: {len(stopped)} trial(s)",
            "",
            "Each trial scored its model on the holdout as it trained; at each rung a trial below the best "
            f"1/{spec.asha.reduction_factor} of those of its bracket that reached the rung before it stopped there "
            "(its score then is not comparable with finished trials', and it is not ranked above). Brackets "
            "group strategies by how their candidate starts (from the current model, its members, its body, or "
            "from scratch): a network trained from scratch is judged only against others trained from scratch, "
            "never against fine-tuned ones that start near the answer.",
            "",
        ]
        warned = mostly_stopped(records, stopped)
        lines += [f"**{line}**" for line in warned] + ([""] if warned else [])
        lines += [
            f"- `{r['trial_id']}` (`{r['params']}`): after {r['stopped_epochs']} epochs, holdout score "
            f"{abs(r['stopped_score']):.3f}"
            for r in stopped
        ]
        lines.append("")
    if failures:
        lines += ["## Failed trials", ""]
        lines += [f"- `{trial_id}`: {f.message}" for trial_id, f in failures]
        lines.append("")
    if plots:
        lines += ["Plots: " + ", ".join(f"`{p}`" for p in plots) + ".", ""]
    return "\n".join(lines)


def mostly_stopped(records: list[dict[str, Any]], stopped: list[dict[str, Any]]) -> list[str]:
    """One line per strategy whose trials early stopping mostly removed: its ranking rests on few."""
    lines = []
    for name in sorted({r["strategy"] for r in stopped}):
        n_stopped = sum(r["strategy"] == name for r in stopped)
        n_all = n_stopped + sum(r["strategy"] == name for r in records)
        if n_stopped * 2 > n_all:
            lines.append(f"ASHA stopped {n_stopped} of {n_all} {name} trials early: its place rests on the rest")
    return lines


def _stopped_words(stopped: list[dict[str, Any]]) -> str:
    return f", {len(stopped)} stopped early" if stopped else ""


def plots(records: list[dict[str, Any]], task: str = "classification") -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = headline(task)[0]
    metric, label = f"holdout_{first}", f"holdout {first.replace('_', ' ')}"
    rows = summarize(records, task)
    labels = [r["strategy"] + ("" if r["params"] == "{}" else f"\n{r['params']}") for r in rows]
    out = {}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    means = [r[metric][0] or 0 for r in rows]
    stds = [r[metric][1] or 0 for r in rows]
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(f"{label} (mean ± std over seeds)")
    if task == "regression":
        ax.set_ylim(0, max(m + s for m, s in zip(means, stds, strict=True)) * 1.1 or 1)
        ax.set_title(f"{first.upper()} by strategy (lower is better)")
    else:
        ax.set_ylim(max(0.0, min(means) - 0.1), min(1.0, max(means) + 0.05))
        ax.set_title("Accuracy by strategy")
    fig.tight_layout()
    out[f"plots/{first}_by_strategy.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for strategy in sorted({r["strategy"] for r in records}):
        rs = [r for r in records if r["strategy"] == strategy and r.get(metric) is not None]
        ax.scatter([r["train_seconds"] for r in rs], [r[metric] for r in rs], label=strategy, s=24)
    ax.set_xlabel("train seconds")
    ax.set_ylabel(label)
    ax.set_title(f"{first.replace('_', ' ').capitalize()} against training time (one point per trial)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out[f"plots/{first}_vs_seconds.png"] = png(fig)
    return out


def accuracy_matrix_png(
    records: list[dict[str, Any]], ancestors: list[Manifest], batch_ids: list[str], task: str
) -> bytes | None:
    """A heatmap of the accuracy matrix: one row per version of the current model's lineage
    (oldest first, at most five) and per configuration of the sweep (mean over seeds), one
    column per batch; None if no record has per-batch scores."""
    name = headline(task)[0]
    columns = [b for b in batch_ids if any(f"batch_{b}_{name}" in r for r in records)]
    if not columns:
        return None
    labels, rows = [], []
    for m in reversed(ancestors[:5]):
        scores = matrix_row(m.metrics)[1]
        labels.append(f"version {m.version}")
        rows.append([scores.get(b, np.nan) for b in columns])
    for r in summarize(records, task):
        labels.append(r["strategy"] + ("" if r["params"] == "{}" else f" {r['params']}"))
        rows.append([(r.get(f"batch_{b}_{name}") or (np.nan,))[0] for b in columns])
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], float)
    return heatmap_png(
        values,
        labels,
        [f"batch {batch_ids.index(b) + 1}" for b in columns],
        f"Holdout {name} per batch: the current lineage (top), then each configuration",
        lower_is_better=name == "rmse",
        split_after=min(len(ancestors), 5),
    )
