"""`ctrain report`: the store's life on one page.

An HTML page with PNG plots beside it (open it from disk; no server) and the same as
Markdown: every batch's arrival, the stream's drift statistics and trigger decisions, the
candidates it tried and their scores, every version with its holdout score, forgetting and
flips, every promotion and rollback with its reason, holdout scores over time and the
accuracy matrix of the current version's lineage.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np

from continual_trainer.data.manifest import lineage
from continual_trainer.data.storage import Store
from continual_trainer.plots import heatmap_png, png, pyplot
from continual_trainer.promotion import stored_manifest
from continual_trainer.trainer.evaluate import headline
from continual_trainer.trainer.forgetting import matrix_row

MATRIX_ROWS = 12


def build_report(store: Store, history: list[dict[str, Any]]) -> dict[str, bytes]:
    """`index.html`, `report.md` and the `plots/*.png` they show, by relative path."""
    first = headline(store.schema.task)[0]
    batches = [{"id": b, **store.batch_info(b)} for b in store.batch_ids()]
    events = store.stream_events()
    by_batch = {str(e["batch"]): e for e in events if e.get("batch")}
    promotions = store.events("promote")
    plots: dict[str, bytes] = {}
    if history:
        plots["plots/holdout_over_time.png"] = _over_time(history, first)
    if events:
        plots["plots/stream.png"] = _stream_plot(events, first)
    matrix = _matrix(store, first)
    if matrix:
        plots["plots/accuracy_matrix.png"] = matrix
    sections = _sections(store, history, batches, by_batch, promotions, first, events)
    return {
        "index.html": _html(store, sections, plots).encode(),
        "report.md": _markdown(store, sections, plots).encode(),
        **plots,
    }


Table = tuple[list[str], list[list[str]]]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _live_value(metric: Mapping[str, Any]) -> str:
    """`accuracy 0.912` or `rmse 3.1` from a live metric; – without rows."""
    name = "rmse" if "rmse" in metric else "accuracy"
    return f"{name} {metric[name]:.3f}" if metric.get("rows") else "–"


def _stat(value: Any) -> str:
    """A statistic in three significant digits (p-values can be tiny)."""
    return "–" if value is None else f"{value:.3g}"


def _sections(
    store: Store,
    history: list[dict[str, Any]],
    batches: list[dict[str, Any]],
    by_batch: Mapping[str, dict[str, Any]],
    promotions: list[dict[str, Any]],
    first: str,
    events: list[dict[str, Any]],
) -> list[tuple[str, str, Table | None]]:
    """(title, one paragraph, table) per section."""
    timeline = _timeline(batches, by_batch, first)
    versions, moves, live = _version_rows(history, first), _promotion_rows(promotions), _live_rows(history)
    current = store.current()
    n_fired = sum(1 for e in events if any(d.get("fire") for d in (e.get("triggers") or {}).values()))
    summary = (
        f"{len(batches)} batches, {len(history)} versions, current {current or 'none'}; "
        f"{len(events)} stream file(s), of which {n_fired} fired a trigger."
    )
    return [
        ("Now", _now(store, history, batches, events, promotions, first), None),
        ("Summary", summary + " " + _cost(history, events, promotions), None),
        (
            "Batches as they arrived",
            f"Each batch with the stream's view of it (if it came through `ctrain stream`): the current model's "
            f"{first} on it before any update, each trigger's statistic (performance: the rise in error; "
            "features: the smallest adjusted p-value), whether one fired, the candidates tried with their "
            f"holdout {first}, and what happened.",
            (
                [
                    "#",
                    "ingested (UTC)",
                    "source",
                    "rows",
                    "new classes",
                    f"current model's {first}",
                    "triggers",
                    "fired",
                    "candidates",
                    "outcome",
                ],
                timeline,
            ),
        ),
        (
            "Versions",
            f"Holdout {first} (on the holdout of the batches each version saw), forgetting along its lineage, "
            "negative flip rate against its parent; * is current.",
            (
                ["version", "strategy", "parent", first, "holdout rows", "forgetting", "flips", "seconds", "promoted"],
                versions,
            ),
        ),
        (
            "Promotions",
            "Every change of the current version, by whom and why.",
            (["time", "version", "previous", "by", "reason"], moves),
        ),
        *(
            [
                (
                    "Live traffic",
                    "Rows `ctrain serve` answered whose labels arrived later (`ctrain label`): each version's live "
                    "metric on the rows it answered, and a shadow candidate's on the rows it scored beside the "
                    "served version (with the served version's on the same rows, and how often it agreed with "
                    "what was served: its accuracy against the served predictions, or the RMSE between them).",
                    (
                        ["version", "as", "live metric", "labelled rows", "served on the same rows", "agreement"],
                        live,
                    ),
                )
            ]
            if live
            else []
        ),
    ]


def _timeline(batches: list[dict[str, Any]], by_batch: Mapping[str, dict[str, Any]], first: str) -> list[list[str]]:
    """A row per batch as it arrived, with the stream's view of it (triggers, candidates, outcome)."""
    timeline: list[list[str]] = []
    for i, b in enumerate(batches, 1):
        e = by_batch.get(b["id"], {})
        fired = [n for n, d in (e.get("triggers") or {}).items() if d.get("fire")]
        stats = "; ".join(
            f"{n}: {_stat(d.get('statistic'))}{' fired' if d.get('fire') else ''}"
            + (f" ({', '.join(d['because'])})" if d.get("fire") and d.get("because") else "")
            + (f" — {d['detail']}" if d.get("detail") else "")
            for n, d in (e.get("triggers") or {}).items()
        )
        tried = ", ".join(
            f"{c['strategy']} {_fmt((c.get('holdout') or {}).get(first))}" if "error" not in c else f"{c['strategy']} ✗"
            for c in e.get("candidates") or []
        )
        timeline.append(
            [
                str(i),
                str(b.get("ingested", ""))[:19].replace("T", " "),
                str(b.get("source", "")),
                str(b.get("rows", "")),
                ", ".join(map(str, b.get("new_classes") or [])) or "",
                _fmt((e.get("drift") or {}).get(first)),
                stats or ("" if not e else "–"),
                "yes" if fired else ("no" if e.get("triggers") else ""),
                tried,
                f"{e.get('status', '')} {e.get('version') or ''}".strip(),
            ]
        )
    return timeline


def _version_rows(history: list[dict[str, Any]], first: str) -> list[list[str]]:
    return [
        [
            ("* " if h["current"] else "") + h["version"],
            h["strategy"],
            h["parent"] or "–",
            _fmt(h["metrics"].get(f"holdout_{first}")),
            str(h["holdout_rows"]),
            _fmt(h["forgetting"]),
            _fmt(h["negative_flip_rate"]),
            _fmt(h["train_seconds"], 2),
            "yes" if h["promoted"] else "no",
        ]
        for h in history
    ]


def _promotion_rows(promotions: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(p.get("time", ""))[:19].replace("T", " "),
            str(p.get("version", "")),
            str(p.get("previous") or "–"),
            str(p.get("by", "")),
            str(p.get("reason", "")),
        ]
        for p in promotions
    ]


def _live_rows(history: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            h["version"],
            role,
            _live_value(m),
            str(m.get("rows", 0)),
            _live_value(m["served"]) if role == "shadow" else "",
            _live_value(m.get("agreement") or {}) if role == "shadow" else "",
        ]
        for h in history
        for role, m in (h.get("live") or {}).items()
    ]


def _now(
    store: Store,
    history: list[dict[str, Any]],
    batches: list[dict[str, Any]],
    events: list[dict[str, Any]],
    promotions: list[dict[str, Any]],
    first: str,
) -> str:
    """The current version and its score, what happened last, and what to do next."""
    current = next((h for h in history if h["current"]), None)
    if current is None:
        return "No current version yet: `ctrain init` has not finished."
    score = _fmt(current["metrics"].get(f"holdout_{first}"))
    parts = [f"Current: {current['version']} ({current['strategy']}), holdout {first} {score}."]
    last = [(str(p.get("time", "")), f"{p.get('by', '')} made {p.get('version')} current ({p.get('reason', '')})")
            for p in promotions[-1:]]  # fmt: skip
    last += [(str(b.get("ingested", "")), f"batch {b['id']} arrived from {b.get('source', '?')}") for b in batches[-1:]]
    if last:
        parts.append(f"Last: {max(last)[1]}.")
    seen = set(store.manifest(current["version"]).batches_seen)
    retired = store.retired_batches()
    waiting = [b for b in batches if b["id"] not in seen and b["id"] not in retired]
    drifted = [v for v in store.events("served-drift") if v.get("fire")]
    failed = [e for e in events[-1:] if e.get("status") in ("rejected", "failed")]
    where = store.display
    if waiting:
        parts.append(
            f"Next: {len(waiting)} batch(es) not learned yet ({', '.join(str(b.get('source')) for b in waiting[:3])}"
            f"{', ...' if len(waiting) > 3 else ''}): `ctrain update --store {where} --strategy "
            "finetune_all,ewc,fresh_all` compares three ways to learn them and keeps the best."
        )
    elif failed:
        parts.append(f"Next: look at {failed[0].get('file')}: {failed[0].get('reason', '')}.")
    elif drifted and drifted[-1].get("to", "") >= str(current.get("created", "")):
        parts.append(
            "Next: served traffic drifted since this version was made; join labels with `ctrain label` and update."
        )
    else:
        parts.append("Next: nothing to do; the current version has learned every batch.")
    return " ".join(parts)


def _cost(history: list[dict[str, Any]], events: list[dict[str, Any]], promotions: list[dict[str, Any]]) -> str:
    """Training time spent, updates made and promoted, and what triggers saved against updating
    on every file (the quiet files times the mean time of the stream's updates)."""
    seconds = sum(float(h.get("train_seconds") or 0) for h in history)
    text = (
        f"Cost: {seconds:.1f} s of training over {max(len(history) - 1, 0)} update(s), {len(promotions)} promotion(s)."
    )
    updates = [float(e.get("seconds") or 0) for e in events if e.get("status") in ("updated", "kept")]
    quiet = [e for e in events if e.get("status") == "ingested"]
    if updates and quiet:
        saved = len(quiet) * sum(updates) / len(updates)
        text += (
            f" Triggers kept the model on {len(quiet)} of {len(events)} stream files: about {saved:.0f} s saved "
            f"against updating on every file (the mean stream update took {sum(updates) / len(updates):.1f} s)."
        )
    return text


def comparable_steps(history: list[dict[str, Any]]) -> list[int]:
    """The positions `i` whose version was scored on the same holdout rows as version `i - 1`
    (the same batches seen, as many rows): only there does the plot draw a line between them."""
    same = [(h["batches_seen"], h["holdout_rows"]) for h in history]
    return [i for i in range(1, len(history)) if same[i] == same[i - 1]]


def _over_time(history: list[dict[str, Any]], first: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(len(history))
    ys = np.array([h["metrics"].get(f"holdout_{first}") or np.nan for h in history], float)
    promoted = np.array([h["promoted"] for h in history])
    for i in comparable_steps(history):
        ax.plot(xs[i - 1 : i + 1], ys[i - 1 : i + 1], color="#bbbbbb", linewidth=1, zorder=1)
    ax.scatter(xs[promoted], ys[promoted], color="#2b8a3e", label="promoted", zorder=2)
    ax.scatter(xs[~promoted], ys[~promoted], facecolors="none", edgecolors="#c92a2a", label="not promoted", zorder=2)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("version (in order of creation)")
    ax.set_ylabel(f"holdout {first.replace('_', ' ')}")
    ax.set_title(f"Holdout {first.replace('_', ' ')} of every version (each on the batches it saw)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def _stream_plot(events: list[dict[str, Any]], first: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = np.arange(1, len(events) + 1)
    drift = np.array([(e.get("drift") or {}).get(first) or np.nan for e in events], float)
    ax.plot(xs, drift, marker="o", markersize=3, color="#1c7ed6", label=f"current model's {first} on the file")
    fired = [i for i, e in enumerate(events) if any(d.get("fire") for d in (e.get("triggers") or {}).values())]
    if fired:
        ax.scatter(xs[fired], drift[fired], marker="^", s=60, color="#e8590c", label="a trigger fired", zorder=3)
    for i, e in enumerate(events):
        if e.get("status") == "updated":
            ax.axvline(xs[i], color="#2b8a3e", alpha=0.4, linewidth=2)
    ax.plot([], [], color="#2b8a3e", alpha=0.4, linewidth=2, label="update promoted")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("stream file")
    ax.set_ylabel(first.replace("_", " "))
    ax.set_title("The stream: each file as it arrived, before any update")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)


def _matrix(store: Store, first: str) -> bytes | None:
    current = store.current()
    if current is None:
        return None
    chain = list(reversed(lineage(current, stored_manifest(store))))[-MATRIX_ROWS:]
    batch_ids = store.batch_ids()
    rows = [matrix_row(m.metrics)[1] for m in chain]
    columns = [b for b in batch_ids if any(b in r for r in rows)]
    if not columns:
        return None
    values = np.array([[r.get(b, np.nan) for b in columns] for r in rows], float)
    return heatmap_png(
        values,
        [f"{m.strategy} {m.version}" for m in chain],
        [_source(store, b, batch_ids.index(b) + 1) for b in columns],
        f"Accuracy matrix of the current lineage: holdout {first} per batch (oldest version on top)",
        lower_is_better=first == "rmse",
    )


def _source(store: Store, batch: str, number: int) -> str:
    """A batch as people know it: its source file (shortened), else its number."""
    source = str(store.batch_info(batch).get("source") or "").split(" joined to the prediction log")[0]
    source = source.removesuffix(".parquet")
    if not source:
        return f"batch {number}"
    return source if len(source) <= 14 else source[:6] + "…" + source[-7:]


def _markdown(store: Store, sections: list[tuple[str, str, Table | None]], plots: Mapping[str, bytes]) -> str:
    lines = [f"# Store report: {store.display}", ""]
    for title, text, table in sections:
        lines += [f"## {title}", "", text, ""]
        if table and table[1]:
            head, rows = table
            lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
p { max-width: 75em; }
.now { border: 2px solid #1971c2; background: #e7f5ff; padding: 0.2em 1em; margin: 1em 0; }
"""


def _html(store: Store, sections: list[tuple[str, str, Table | None]], plots: Mapping[str, bytes]) -> str:
    e = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ctrain report: {e(store.display)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Store report: {e(store.display)}</h1>",
    ]
    for title, text, table in sections:
        if title == "Now":
            out.append(f'<div class="now"><p>{e(text)}</p></div>')
            continue
        out += [f"<h2>{e(title)}</h2>", f"<p>{e(text)}</p>"]
        if table and table[1]:
            head, rows = table
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif table:
            out.append("<p><em>none</em></p>")
    if plots:
        out.append("<h2>Plots</h2>")
        out += [f'<p><img src="{e(name)}" alt="{e(name)}"></p>' for name in plots]
    out.append("</body></html>")
    return "\n".join(out)
