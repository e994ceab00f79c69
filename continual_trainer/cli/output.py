"""What commands print: the result for a person, or one JSON object with `--json`; the next
step, runnable as printed; numbers, version ids and live metrics in one style everywhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from continual_trainer.data.errors import terminal_safe


def emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    from continual_trainer.trainer.progress import clear

    clear()  # a bar or phase line ends before the result starts
    if text:
        print(terminal_safe(text, lines=True))
    if args.json:
        print(json.dumps(payload, default=str, sort_keys=True))


def program_name() -> str:
    """How the user can run ctrain again: `ctrain` if that is on PATH and is this program, else
    the path they ran (e.g. `.venv/bin/ctrain` after `make demo`), else `python -m continual_trainer`."""
    import shutil

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if os.path.basename(argv0) != "ctrain":
        return "python -m continual_trainer"
    found = shutil.which("ctrain")
    if found and os.path.realpath(found) == os.path.realpath(argv0):
        return "ctrain"
    return argv0


def next_step(*commands: str) -> str:
    """The next step(s), runnable as printed: `next: <program> <command>`, several joined by `; `."""
    return "next: " + "; ".join(f"{program_name()} {c}" for c in commands)


def after_outcome(o: Any, store: str) -> str:
    """What to run after an update's outcome: undo the promotion, or promote the version."""
    if o.promoted:
        return next_step(f"rollback --store {store}") + "  (undoes the promotion)"
    return next_step(f"promote --store {store} {o.version[-4:]}") + "  (makes it current)"


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def headline(metrics: dict[str, Any]) -> tuple[str, str]:
    """The two metrics a version is judged by: RMSE and MAE for regression, else accuracy and log loss."""
    import continual_trainer as ct

    return ct.metric_names("regression" if any(k.endswith("_rmse") for k in metrics) else "classification")


def outcome_text(o: Any) -> str:
    m, c = o.metrics, o.current_metrics
    first, second = headline(m)
    lines = [f"version {o.version} ({o.strategy}, parent {o.parent or '-'})"]
    if f"holdout_{first}" in m:
        baseline = m.get("holdout_majority") if first == "accuracy" else m.get("holdout_baseline_rmse")
        base = "majority class" if first == "accuracy" else "predicting the mean"
        extra, extra_name = ("roc_auc", "ROC AUC") if first == "accuracy" else ("r2", "R²")
        lines.append(
            f"holdout {first.replace('_', ' ')} {fmt(m[f'holdout_{first}'])} "
            f"(current {fmt(c.get(f'holdout_{first}'))}; {base} {fmt(baseline)}), "
            f"{second.replace('_', ' ')} {fmt(m[f'holdout_{second}'])}, "
            f"{extra_name} {fmt(m.get(f'holdout_{extra}'))}, on {int(m.get('holdout_rows') or 0)} rows"
        )
    lines.append(f"trained in {o.train_seconds:.2f} s in {o.executor or 'this process'}, {o.members} member(s)")
    lines.append(f"promoted: {'yes' if o.promoted else 'no'} ({o.reason})")
    lines += [f"warning: this model may have learned nothing: {w}" for w in o.warnings]
    return "\n".join(lines)


def agreement(metric: dict[str, Any]) -> str:
    """`; agrees on 95.0 %` (or `; RMSE 0.12 from it`) of a shadow's live metric, if known."""
    agreement = metric.get("agreement") or {}
    if "accuracy" in agreement:
        return f"; agrees on {100 * agreement['accuracy']:.1f} %"
    return f"; RMSE {agreement['rmse']:.3g} from it" if "rmse" in agreement else ""


def live_text(metric: dict[str, Any]) -> str:
    """`accuracy 0.912 on 500 rows` (or RMSE) from a live metric."""
    name = "rmse" if "rmse" in metric else "accuracy"
    if not metric.get("rows"):
        return "no rows"
    return f"{name} {metric[name]:.3f} on {metric['rows']} rows"


def tail(version: str, width: int) -> str:
    """A version id cut to `width` from the left (its tail, which names it uniquely)."""
    return version if len(version) <= width else "…" + version[-(width - 1) :]


def short(version: str | None) -> str:
    """A version id's tail (its unique suffix, as every command takes it)."""
    return "-" if not version else "…" + version[-12:]
