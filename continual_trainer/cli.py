"""The `ctrain` command line. Mistakes a user can make end with one line and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from continual_trainer.data.errors import TerminalFormatter, UserError, terminal_safe
from continual_trainer.trainer.params import Constraint, Interval

EXIT_USER_ERROR = 2
EXIT_WORK_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM and SIGHUP exit with 128 + their number too
_STANDALONE = False  # True when `main` runs as the `ctrain` process (`run`), not for a caller that keeps its Ray


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived (raised in the main thread by `ctrain`'s handler)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(terminal_safe(f"ctrain: error: {message} (see `{self.prog} --help`)"), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


SEED = Interval(int, 0, 2**31 - 1)
HOLDOUT = Interval(float, 0, 1, high_open=True)


def budgeted(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--memory-budget",
        type=_size,
        metavar="SIZE",
        help="memory the training rows may take, e.g. 2GiB (default 192MiB of rows where the strategies can "
        "read the store in pieces, else a quarter of this machine's); above it they train on rows read from "
        "the store a chunk at a time",
    )


def _size(raw: str) -> int:
    from continual_trainer.trainer.params import parse_size

    try:
        return parse_size(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(raw: str) -> float:
    from continual_trainer.trainer.params import parse_duration

    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def written(raw: str) -> str:
    """The type of every flag naming a path a command writes (the API checks it with
    `data.storage.check_output`; tests/continual_trainer/test_outputs.py finds them all by it)."""
    return raw


def _checked(constraint: Constraint) -> Any:
    """An argparse `type` parsing and checking an option by a declared constraint (see trainer.params)."""

    def parse(raw: str) -> Any:
        try:
            value = constraint.parse(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None
        if not constraint.accepts(value):
            raise argparse.ArgumentTypeError(f"{raw!r}: must be {constraint.describe()}")
        return value

    return parse


def _shape(raw: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = raw.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected COLUMN=D1,D2,... with whole numbers >= 1")
    return name, shape


def _settings(pairs: Sequence[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def _names(raw: str | None) -> list[str] | None:
    """`--features a,b,x*` as names and patterns."""
    return [n.strip() for n in raw.split(",") if n.strip()] if raw else None


def _emit(args: argparse.Namespace, text: str, payload: dict[str, Any]) -> None:
    from continual_trainer.trainer.progress import clear

    clear()  # a bar or phase line ends before the result starts
    if text:
        print(terminal_safe(text, lines=True))
    if args.json:
        print(json.dumps(payload, default=str, sort_keys=True))


def _program() -> str:
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


def _next(*commands: str) -> str:
    """The next step(s), runnable as printed: `next: <program> <command>`, several joined by `; `."""
    return "next: " + "; ".join(f"{_program()} {c}" for c in commands)


def _after_outcome(o: Any, store: str) -> str:
    """What to run after an update's outcome: undo the promotion, or promote the version."""
    if o.promoted:
        return _next(f"rollback --store {store}") + "  (undoes the promotion)"
    return _next(f"promote --store {store} {o.version[-4:]}") + "  (makes it current)"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _headline(metrics: dict[str, Any]) -> tuple[str, str]:
    """The two metrics a version is judged by: RMSE and MAE for regression, else accuracy and log loss."""
    import continual_trainer as ct

    return ct.metric_names("regression" if any(k.endswith("_rmse") for k in metrics) else "classification")


def _outcome_text(o: Any) -> str:
    m, c = o.metrics, o.current_metrics
    first, second = _headline(m)
    lines = [f"version {o.version} ({o.strategy}, parent {o.parent or '-'})"]
    if f"holdout_{first}" in m:
        baseline = m.get("holdout_majority") if first == "accuracy" else m.get("holdout_baseline_rmse")
        base = "majority class" if first == "accuracy" else "predicting the mean"
        extra, extra_name = ("roc_auc", "ROC AUC") if first == "accuracy" else ("r2", "R²")
        lines.append(
            f"holdout {first.replace('_', ' ')} {_fmt(m[f'holdout_{first}'])} "
            f"(current {_fmt(c.get(f'holdout_{first}'))}; {base} {_fmt(baseline)}), "
            f"{second.replace('_', ' ')} {_fmt(m[f'holdout_{second}'])}, "
            f"{extra_name} {_fmt(m.get(f'holdout_{extra}'))}, on {int(m.get('holdout_rows') or 0)} rows"
        )
    lines.append(f"trained in {o.train_seconds:.2f} s in {o.executor or 'this process'}, {o.members} member(s)")
    lines.append(f"promoted: {'yes' if o.promoted else 'no'} ({o.reason})")
    lines += [f"warning: this model may have learned nothing: {w}" for w in o.warnings]
    return "\n".join(lines)


def cmd_init(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.init_store(
        args.store,
        args.data,
        args.label,
        model=args.model,
        features=_names(args.features),
        ignore=_names(args.ignore),
        shapes=dict(args.shape or []),
        task=args.task,
        train=args.train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        holdout=args.holdout,
        seed=args.seed,
        mlflow=args.mlflow,
        mlflow_model=args.mlflow_model,
    )
    o = store.last_outcome
    payload = o.to_json()
    text = "" if args.json else _outcome_text(o)
    if o.strategy == "import":  # scored as it is: fair only on rows it was not fitted on
        payload["note"] = IMPORT_NOTE.format(data=args.data)
        text += "\nnote: " + payload["note"]
    _emit(args, text, payload)


IMPORT_NOTE = (
    "the holdout score above is fair only if the model was not fitted on the holdout rows, which the store "
    "cannot know; `ctrain split --data {data} --out-train T --out-holdout H` writes the exact split this "
    "store uses: fit the model on T"
)


def cmd_inputs(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if args.store:
        spec = ct.expected_inputs(args.store)
    elif args.data and args.label:
        spec = ct.expected_inputs(
            data=args.data,
            label=args.label,
            per_column=args.per_column,
            features=_names(args.features),
            ignore=_names(args.ignore),
            shapes=dict(args.shape or []),
        )
    else:
        raise UserError("inputs: give --store, or --data and --label for a store not yet made")
    lines = ["import keras", "", "inputs = {"]
    for name, info in spec.items():
        cols = info["columns"]
        about = f"  # {', '.join(cols[:6])}{', ...' if len(cols) > 6 else ''}" if cols != [name] else ""
        if info["vocabulary"] is not None:
            about = f"  # {info['vocabulary']} values so far; map them with StringLookup (others go to its OOV bucket)"
        lines.append(f'    "{name}": {info["keras"]},{about}')
    lines.append("}")
    _emit(args, "" if args.json else "\n".join(lines), {"inputs": spec})


def cmd_export(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    r = ct.open_store(args.store).export(args.out, version=args.version, format=args.format)
    _emit(args, "" if args.json else f"exported version {r['version']} as {r['format']} to {r['out']}", r)


def cmd_split(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    r = ct.split_file(args.data, args.out_train, args.out_holdout, holdout=args.holdout)
    text = (
        f"wrote {r['train_rows']} training rows to {args.out_train} and {r['holdout_rows']} holdout rows to "
        f"{args.out_holdout}: fit your model on the first, then `ctrain init --data {args.data} --model ...`"
    )
    _emit(args, "" if args.json else text, r)


def cmd_batches(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    rows = ct.open_store(args.store).batches()
    lines = [f"  {'batch':22} {'rows':>7}  {'ingested':19}  {'learned':7}  source"]
    for r in rows:
        state = f"  retired: {terminal_safe(r['retired'].get('reason') or '-')}" if r["retired"] else ""
        when = str(r["ingested"] or "")[:19].replace("T", " ")
        lines.append(
            f"  {r['batch']:22} {r['rows']:>7}  {when:19}  {'yes' if r['learned_by_current'] else 'no':7}  "
            f"{terminal_safe(str(r['source']))}{state}"
        )
    _emit(args, "" if args.json else "\n".join(lines), {"batches": rows})


def cmd_drop(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    batch = ct.open_store(args.store).drop(args.batch, reason=args.reason or "")
    text = f"batch {batch} retired: kept in the store and in every lineage, never trained on or scored again"
    _emit(args, "" if args.json else text, {"batch": batch, "retired": True})


def cmd_verify(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    problems, notes = store.verify()
    lines = [f"problem: {p}" for p in problems] + [f"note: {n}" for n in notes]
    lines.append(f"{store.display}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    _emit(args, "" if args.json else "\n".join(lines), {"ok": not problems, "problems": problems, "notes": notes})
    if problems:
        raise StoreDamaged(f"{store.display}: {len(problems)} problem(s); first: {problems[0]}")


class StoreDamaged(Exception):
    """`verify` found problems: exit 1 (not the user's mistake), after the full list."""


def cmd_ingest(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    results = ct.open_store(args.store).ingest(list(args.files), new_classes=args.new_classes)
    lines = []
    for path, r in zip(args.files, results, strict=True):
        state = "added as" if r.added else "already in the store as"
        extra = f", new classes {list(r.new_classes)}" if r.new_classes else ""
        lines.append(f"{terminal_safe(path)}: {r.rows} rows {state} batch {r.batch_id}{extra}")
    payload = {
        "batches": [
            {"batch": r.batch_id, "rows": r.rows, "added": r.added, "new_classes": list(r.new_classes)} for r in results
        ]
    }
    _emit(args, "" if args.json else "\n".join(lines), payload)


def cmd_update(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    settings = _settings(args.set)
    names = [n.strip() for n in args.strategy.split(",") if n.strip()]
    for name in names:  # fail fast, before TensorFlow loads
        ct.check_strategy(name, settings if len(names) == 1 else None)
    store = ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)
    common = {
        "promote": args.promote,
        "seed": args.seed,
        "max_forgetting": args.max_forgetting,
        "max_flip_rate": args.max_flip_rate,
        "promote_on": args.promote_on,
        "memory_budget": args.memory_budget,
        "ray": _where_flag(args),
        "executor": args.executor,
    }
    try:
        if len(names) > 1:
            if args.actors:
                raise UserError.about("actors", args.actors, "trains one strategy; give one --strategy")
            several = store.compare(names, **common, **settings)
            _emit(args, "" if args.json else _several_text(several, args.store), _several_json(several))
            return
        o = store.update(names[0], actors=args.actors, sync_steps=args.sync_steps, **common, **settings)
    except ct.NothingNew as exc:  # a scheduled or retried updater with nothing to do succeeds
        _emit(args, "" if args.json else str(exc), {"version": None, "promoted": False, "reason": str(exc)})
        return
    _emit(args, "" if args.json else _outcome_text(o) + "\n" + _after_outcome(o, args.store), o.to_json())


def _several_text(outcomes: Any, where: str) -> str:
    """Several strategies' versions side by side, best first, and what was promoted."""
    first, second = _headline(outcomes[0].metrics)
    current = outcomes[0].current_metrics.get(f"holdout_{first}")
    lines = [f"  {'strategy':14} {'version':40} {first[:8]:>8} {second[:8]:>8} {'secs':>6}  promoted"]
    for o in outcomes:
        m = o.metrics
        lines.append(
            f"{'*' if o.promoted else ' '} {o.strategy:14} {o.version:40} {_fmt(m.get(f'holdout_{first}')):>8} "
            f"{_fmt(m.get(f'holdout_{second}')):>8} {o.train_seconds:6.1f}  "
            f"{'yes' if o.promoted else 'no'} ({o.reason})"
        )
    lines.append(f"holdout {first} of the current version before: {_fmt(current)}; every strategy is kept as a version")
    lines += [f"failed: {f}" for f in outcomes.failed]
    promoted = next((o for o in outcomes if o.promoted), None)
    if promoted is None:
        lines.append(_next(f"promote --store {where} {outcomes[0].version[-4:]}") + "  (makes the best one current)")
    else:
        lines.append(_next(f"rollback --store {where}") + "  (undoes the promotion)")
    return "\n".join(lines)


def _several_json(outcomes: Any) -> dict[str, Any]:
    promoted = next((o.version for o in outcomes if o.promoted), None)
    return {
        "versions": [o.to_json() for o in outcomes],
        "version": promoted,
        "promoted": promoted is not None,
        "failed": outcomes.failed,
    }


def cmd_predict(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    r = store.predict_file(
        args.data,
        args.out,
        version=args.version,
        actors=args.actors,
        ray=_where_flag(args),
        executor=args.executor,
        prediction_column=args.prediction_column,
    )
    text = f"wrote {r['rows']} predictions of version {r['version']} to {r['out']} (scored in {r['executor']})"
    _emit(args, "" if args.json else text, r)


def cmd_serve(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError.about("token-file", args.token_file, f"cannot be read ({exc.__class__.__name__})") from None
        if not token:
            raise UserError.about("token-file", args.token_file, "is empty")
    store = ct.open_store(args.store)
    url = f"http://{args.host}:{args.port}"

    def ready(version: str) -> None:  # the JSON object is the last line: nothing follows it but the stop
        text = f"serving version {version} of {store.display} on {url} (POST /predict; Ctrl-C stops)"
        _emit(args, "" if args.json else text, {"url": url, "version": version, "store": store.display})
        sys.stdout.flush()

    store.serve(
        on_ready=ready,
        console=not args.json,
        host=args.host,
        port=args.port,
        poll=args.poll,
        max_body=args.max_body,
        token=token,
        log_sample=args.log_sample,
        id_column=args.id_column,
        shadow=args.shadow,
        workers=args.workers,
        batch_rows=args.batch_rows,
        batch_wait=args.batch_wait_us / 1e6,
        ray=_serve_on_ray(args),
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        replica_cpus=args.replica_cpus,
    )


def cmd_label(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store)
    r = store.label(
        args.data,
        key=args.key,
        label=args.label,
        late_after=args.late_after,
        promote=args.promote,
        min_shadow_rows=args.min_shadow_rows,
    )
    counts = (
        f"{r['labels']} label(s): {r['matched']} matched the prediction log, {r['unknown']} unknown, "
        f"{r['duplicated']} duplicated, {r['late']} late"
    )
    if r["batch"] is None:
        text = f"{counts}; nothing to ingest"
    else:
        live = "; ".join(f"{v}: {_live_text(m)}" for v, m in r["live"].items())
        shadow = "; ".join(
            f"shadow {v}: {_live_text(m)} (served: {_live_text(m['served'])}{_agreement(m)})"
            for v, m in r["shadow"].items()
        )
        kept = "ingested as batch" if r["added"] else "already in the store as batch"
        promoted = [f"promoted {r['promoted']} ({r['reason']})"] if r["promoted"] else []
        text = "\n".join(
            [
                f"{counts}",
                f"{kept} {r['batch']} ({r['matched']} rows)",
                f"live: {live}",
                *([shadow] if shadow else []),
                *promoted,
                _next(f"update --store {args.store} --strategy finetune_new") + "  (learns the labelled rows)",
            ]
        )
    _emit(args, "" if args.json else text, r)


def cmd_drift(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if not args.data and not args.served:
        raise UserError.about("data", None, "give --data FILE (labelled rows) or --served (the rows serve answered)")
    store = ct.open_store(args.store)
    settings = _settings(args.trigger_set)
    r = store.drift(None if args.served else args.data, served=args.served, since=args.since,
                    trigger=args.trigger, **settings)  # fmt: skip
    lines = [
        f"{name}: {'fired' if d['fire'] else 'quiet'}, statistic {_fmt(d.get('statistic'))}; {d.get('detail', '')}"
        for name, d in r.items()
        if isinstance(d, dict)
    ]
    head = f"{r['rows']} served row(s): " if "rows" in r else ""
    verdict = "drifted from what the current version learned" if r["fire"] else "no drift"
    if r["fire"] and args.data:  # labelled rows that drifted: learn them
        where = f"--store {args.store}"
        lines.append(_next(f"ingest {where} {args.data}", f"update {where} --strategy finetune_all"))
    _emit(args, "" if args.json else "\n".join([f"{head}{verdict}", *lines]), r)


def _agreement(metric: dict[str, Any]) -> str:
    """`; agrees on 95.0 %` (or `; RMSE 0.12 from it`) of a shadow's live metric, if known."""
    agreement = metric.get("agreement") or {}
    if "accuracy" in agreement:
        return f"; agrees on {100 * agreement['accuracy']:.1f} %"
    return f"; RMSE {agreement['rmse']:.3g} from it" if "rmse" in agreement else ""


def _live_text(metric: dict[str, Any]) -> str:
    """`accuracy 0.912 on 500 rows` (or RMSE) from a live metric."""
    name = "rmse" if "rmse" in metric else "accuracy"
    if not metric.get("rows"):
        return "no rows"
    return f"{name} {metric[name]:.3f} on {metric['rows']} rows"


def cmd_history(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    rows = ct.open_store(args.store).versions()
    first = _headline(rows[0]["metrics"] if rows else {})[0]
    extra, extra_title = ("roc_auc", "auc") if first == "accuracy" else ("r2", "r2")
    title = {"accuracy": "acc", "rmse": "rmse"}[first]
    lines = _history(rows, first, title, extra, extra_title, args.wide)
    if any(not r["same_holdout"] for r in rows):
        lines.append("† scored on other holdout rows than the current version (*): not directly comparable")
    for r in rows:
        for role, m in r["live"].items():
            beside = f" (served: {_live_text(m['served'])}{_agreement(m)})" if role == "shadow" else ""
            lines.append(f"live, {role}: {_short(r['version'])} {_live_text(m)}{beside}")
    _emit(args, "" if args.json else "\n".join(lines), {"versions": rows})


def _history(
    rows: list[dict[str, Any]], first: str, title: str, extra: str, extra_title: str, wide: bool = False
) -> list[str]:
    """The versions as a table: in at most 100 columns the id's tail (what every command
    takes), strategy, parent, holdout size and score, forgetting, flips, promoted; `wide` adds
    full ids, a second metric, training seconds and the parameters."""
    width = 45 if wide else 20
    head = f"  {'version':{width}} {'strategy':13} {'parent':14} {'rows':>5} {title:>6} "
    head += (f"{extra_title:>6} " if wide else "") + f"{'forget':>6} {'flips':>6} "
    lines = [head + (f"{'secs':>6} promoted  params" if wide else "promoted")]
    for r in rows:
        m = r["metrics"]
        mark = "" if r["same_holdout"] else "†"
        version = r["version"] if wide else _tail(r["version"], width)
        line = (
            f"{'*' if r['current'] else ' '} {version:{width}} {r['strategy'][:13]:13} {_short(r['parent']):14} "
            f"{r['holdout_rows']:>5}{mark or ' '}{_fmt(m.get(f'holdout_{first}')):>6} "
        )
        line += (f"{_fmt(m.get(f'holdout_{extra}')):>6} " if wide else "") + (
            f"{_fmt(r['forgetting']):>6} {_fmt(r['negative_flip_rate']):>6} "
        )
        promoted = "yes" if r["promoted"] else "no"
        line += f"{_fmt(r['train_seconds'], 2):>6} {promoted:8}  {r['params'][:60]}" if wide else promoted
        lines.append(line)
    return lines


def _tail(version: str, width: int) -> str:
    """A version id cut to `width` from the left (its tail, which names it uniquely)."""
    return version if len(version) <= width else "…" + version[-(width - 1) :]


def cmd_report(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    written = ct.open_store(args.store).write_report(args.out)
    where, page, files = written["folder"], written["page"], written["files"]
    _emit(
        args,
        "" if args.json else f"report: {page}\nalso: {where}/report.md and {len(files) - 2} plot(s)",
        {
            "folder": where,
            "page": page,
            "files": files,
        },
    )


def _short(version: str | None) -> str:
    """A version id's tail (its unique suffix, as every command takes it)."""
    return "-" if not version else "…" + version[-12:]


def cmd_promote(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)
    previous = store.current
    version = store.promote(args.version, reason=args.reason or "")
    text = f"{version} is current" + (" already" if version == previous else f" (was {previous or '-'})")
    if version != previous:
        text += "\n" + _next(f"rollback --store {args.store}") + "  (undoes it)"
    _emit(args, "" if args.json else text, {"version": version, "previous": previous})


def cmd_rollback(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)
    previous = store.current
    version = store.rollback(args.to, reason=args.reason or "")
    text = f"{version} is current (was {previous})\n" + _next(f"rollback --store {args.store}") + "  (redoes it)"
    _emit(args, "" if args.json else text, {"version": version, "previous": previous})


def cmd_mlflow(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    store = ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)
    r = store.mlflow_sync()
    text = f"MLflow: {r['model']}@champion is model version {r['model_version']}, the store's current {r['version']}"
    _emit(args, "" if args.json else text, r)


def cmd_gc(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    doomed = ct.open_store(args.store).gc(args.keep, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    text = f"{verb} {len(doomed)} version(s) never promoted" + "".join(f"\n  {v}" for v in doomed)
    _emit(args, "" if args.json else text, {"deleted": doomed, "dry_run": args.dry_run})


def _serve_on_ray(args: argparse.Namespace) -> bool | None:
    """`serve` runs here or on Ray Serve: --executor may name only those two."""
    if args.executor not in (None, "local", "ray"):
        raise UserError.about("executor", args.executor, "serve runs here (local) or on Ray Serve (ray)")
    if args.executor is not None:
        return args.executor == "ray"
    return _where_flag(args)


def _where_flag(args: argparse.Namespace) -> bool | None:
    """Ray or not, from --ray / --address / --local, else None: Ray if RAY_ADDRESS is set (or,
    for update and predict, with --actors), this process otherwise; the rule of every command."""
    if getattr(args, "address", None):
        os.environ["RAY_ADDRESS"] = args.address  # this process's cluster, as RAY_ADDRESS names one
        return True
    if getattr(args, "ray", False):
        return True
    if getattr(args, "local", False):
        return False
    return None


def cmd_sweep(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    if not args.config and not args.resume:
        raise UserError("sweep: give --config SWEEP.yaml, or --resume SWEEP_ID")
    store = ct.open_store(args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model)
    r = store.sweep(
        args.config,
        resume=args.resume,
        ray=_where_flag(args),
        executor=args.executor,
        promote_best=args.promote == "best",
        max_forgetting=args.max_forgetting,
        max_flip_rate=args.max_flip_rate,
        memory_budget=args.memory_budget,
    )
    early = f" ({r.stopped} stopped early by ASHA)" if r.stopped else ""
    done = f"{r.finished} of {r.trials} trials finished{early} on {r.where}"
    lines = [f"sweep {r.sweep_id}: {done}; results in {r.folder}"]
    first = ct.metric_names(store.schema.task)[0]
    for row in r.summary(store.schema.task):
        mean, std = row[f"holdout_{first}"]
        value = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"
        lines.append(f"  {row['strategy']:13} {row['params']:40} holdout {first} {value}")
    for trial_id, failure in r.failures:
        print(terminal_safe(f"ctrain: warning: trial {trial_id} failed: {failure.message}"), file=sys.stderr)
    winner = store.last_outcome if args.promote == "best" else None
    if winner is not None:
        lines += [
            "best configuration, trained as a version:",
            _outcome_text(winner),
            _after_outcome(winner, args.store),
        ]
    elif r.finished:
        promote = f"sweep --store {args.store} --resume {r.sweep_id} --promote best"
        lines.append(
            _next(promote) + "  (trains the best configuration as a version, promoted if it beats the current one)"
        )
    _emit(
        args,
        "" if args.json else "\n".join(lines),
        {
            "sweep": r.sweep_id,
            "folder": r.folder,
            "trials": r.trials,
            "finished": r.finished,
            "stopped_early": r.stopped,
            "failed": len(r.failures),
            "executor": r.where,
            **({"winner": winner.to_json()} if winner else {}),
        },
    )


def cmd_stream(args: argparse.Namespace) -> None:
    import continual_trainer as ct

    candidates = [c for c in args.candidates.split(",") if c] if args.candidates else None
    events: list[Any] = []
    where: list[str] = []

    def at(executor: str) -> None:
        if not where and not args.json:
            print(
                terminal_safe(f"stream: {args.inbox} -> {args.store}, policy {args.policy}, on {executor}"), flush=True
            )
        where.append(executor)

    def on_event(event: Any) -> None:
        events.append(event)
        if not args.json:
            print(terminal_safe(event.line()), flush=True)

    served: list[dict[str, Any]] = []

    def on_served(verdict: dict[str, Any]) -> None:
        served.append(verdict)
        if not args.json:
            said = "; ".join(f"{n}: {d.get('detail', '')}" for n, d in verdict.items() if isinstance(d, dict))
            state = "drifted from what the current version learned" if verdict["fire"] else "steady"
            head = f"served traffic ({verdict['rows']} rows, {verdict['from'][:19]} to {verdict['to'][:19]})"
            print(terminal_safe(f"{head}: {state}; {said}"), flush=True)

    recorded = ct.open_store(
        args.store, mlflow=args.mlflow, mlflow_from_env=True, mlflow_model=args.mlflow_model
    ).stream(
        args.inbox,
        policy=args.policy,
        candidates=candidates,
        trigger=args.trigger,
        trigger_params=_settings(args.trigger_set),
        combine=args.trigger_combine,
        seed=args.seed,
        ray=_where_flag(args),
        executor=args.executor,
        max_forgetting=args.max_forgetting,
        max_flip_rate=args.max_flip_rate,
        promote_on=args.promote_on,
        scale=not args.fixed_settings,
        memory_budget=args.memory_budget,
        label_key=args.label_key,
        watch_served=args.watch_served,
        archive=args.archive,
        once=args.once,
        interval=args.interval,
        on_where=at,
        on_event=on_event,
        on_served=on_served,
        params=_settings(args.set),
    )
    if events and all(e.status in ("rejected", "failed") for e in events):
        raise UserError(f"none of the {len(events)} new file(s) was learned; first: {events[0].line()}")
    text = "" if args.json or not args.once else _next(f"report --store {args.store}") + "  (the stream on one page)"
    _emit(args, text, {"events": recorded, "executor": where[-1], **({"served": served} if args.watch_served else {})})


def cmd_demo(args: argparse.Namespace) -> None:
    import continual_trainer as ct
    from continual_trainer.trainer.progress import report

    total, done = len(ct.strategy_names()), []

    def step(row: dict[str, Any]) -> None:
        done.append(row)
        report("strategies", len(done), total, f"{row['strategy']}: acc {row['test_accuracy']:.3f}")

    r = ct.run_demo(args.store, seed=args.seed, ray=_where_flag(args), executor=args.executor, on_result=step)
    best = max(r["results"], key=lambda row: (row["test_accuracy"], -row["test_log_loss"]))
    steps = [f"promote --store {r['store']} {best['version'][-4:]}", f"history --store {r['store']}"]
    example = "examples/sweep.yaml"  # the checkout's example, when run there
    if os.path.exists(example):
        steps.append(f"sweep --store {r['store']} --config {example}")
    steps.append(f"serve --store {r['store']}")
    rows = r["results"][0]
    held = f" ({int(rows['holdout_rows'])} rows)" if rows.get("holdout_rows") else ""
    explained = [
        f"kept: {len(r['results'])} versions, one per strategy; promoted: none (the demo compares: the first "
        "model stays current until you promote one)",
        f"this table scores the tutorial's separate test split ({rows['test_rows']} rows); `history` scores each "
        f"version on the store's holdout, a fifth of each batch{held}: other rows, so strategies within a point of "
        "each other may rank differently there",
        f"best here: {best['strategy']} ({best['test_accuracy']:.3f})",
    ]
    text = "\n".join(
        [r["table"], *explained, f"ran on: {r['executor']}", f"store: {r['store']}", f"report: {r['report']}",
         _next(*steps)]
    )  # fmt: skip
    _emit(
        args,
        "" if args.json else text,
        {"store": r["store"], "report": r["report"], "results": r["results"], "executor": r["executor"]},
    )


def build_parser() -> argparse.ArgumentParser:
    from continual_trainer import __version__

    p = _Parser(prog="ctrain", description="Update trained networks as new labelled data arrives.")
    p.add_argument("--version", action="version", version=f"ctrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, func: Any, help_text: str, needs_tf: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--json", action="store_true", help="print one JSON object on the last line")
        c.add_argument("--quiet", action="store_true", help="no progress on stderr")
        c.set_defaults(func=func, needs_tf=needs_tf)
        return c

    def judged(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--promote-on",
            choices=("holdout", "new"),
            default="holdout",
            help="what auto promotion compares on: every seen batch's held-out rows (default), or the new "
            "batches' only (for data that drifts, where the recent rows matter)",
        )

    def gated(c: argparse.ArgumentParser) -> None:
        share = _checked(Interval(float, 0, 1))
        c.add_argument(
            "--max-forgetting",
            type=share,
            metavar="X",
            help="auto promotion also refuses a version whose accuracy on an earlier batch fell more than X "
            "below the best before it (RMSE: rose more than X); default: no limit",
        )
        c.add_argument(
            "--max-flip-rate",
            type=share,
            metavar="X",
            help="... or whose share of holdout rows the current model gets right and it gets wrong exceeds X",
        )

    def tracked(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--mlflow",
            metavar="URI",
            help="also log runs and register models at this MLflow tracking URI, e.g. sqlite:///mlflow.db "
            "(default: MLFLOW_TRACKING_URI if MLflow is installed)",
        )
        c.add_argument("--mlflow-model", metavar="NAME", help="the registered model (default ctrain-<store folder>)")

    def where(c: argparse.ArgumentParser) -> None:
        """Where work runs, as for every command: this process unless a cluster is configured
        (RAY_ADDRESS, --address) or asked for (--ray, or --actors where there is one)."""
        group = c.add_mutually_exclusive_group()
        group.add_argument("--ray", action="store_true", help="run on Ray: RAY_ADDRESS's cluster, else a local one")
        group.add_argument("--address", metavar="HOST:PORT", help="run on the Ray cluster at this address")
        group.add_argument(
            "--local",
            action="store_true",
            help="run in this process even if RAY_ADDRESS is set (the default without it)",
        )
        group.add_argument(
            "--executor",
            metavar="NAME",
            help="run on the executor registered as NAME (local, ray, or a plugin's; --ray and --local are shorthands)",
        )

    c = command("demo", cmd_demo, "the reference experiment end to end")
    c.add_argument("--store", help="store folder or URI (default: a new temporary folder)")
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    where(c)

    c = command("sweep", cmd_sweep, "strategies x parameters x seeds, side by side (on Ray Tune with --ray)")
    c.add_argument("--store", required=True)
    c.add_argument("--config", help="sweep YAML (see examples/sweep.yaml)")
    c.add_argument("--resume", metavar="SWEEP_ID", help="finish an interrupted sweep without redoing finished trials")
    c.add_argument(
        "--promote",
        choices=("best",),
        help="best: train the winning configuration as a version and promote it if it beats the current one",
    )
    budgeted(c)
    gated(c)
    tracked(c)
    where(c)

    # stream and predict import TensorFlow only when they load a model through Keras (a plain
    # Dense stack scores without it: a quiet stream file or a day's predictions need none)
    c = command("stream", cmd_stream, "ingest and update on every new Parquet file in an inbox", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--inbox", required=True, help="folder or URI watched for *.parquet")
    c.add_argument(
        "--policy",
        default="best",
        help="a strategy name, or best (default): train --candidates in "
        "parallel and promote the winner if it beats the current model",
    )
    c.add_argument("--candidates", help="comma-separated strategies for --policy best")
    c.add_argument(
        "--label-key",
        metavar="COL",
        help="files with this column and the label but no features are delayed labels, joined to the prediction log",
    )
    c.add_argument(
        "--archive", metavar="DIR", type=written, help="move each processed inbox file here (default: it stays)"
    )
    c.add_argument(
        "--watch-served",
        action="store_true",
        help="also judge the traffic serve logged since the last look (the label-free triggers, else features)",
    )
    c.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a parameter for every strategy that has it (repeatable)"
    )
    c.add_argument(
        "--trigger",
        default="always",
        help="when to update: always (default), every, performance, features, or several comma-separated",
    )
    c.add_argument(
        "--trigger-set", action="append", metavar="KEY=VALUE", help="a parameter for every trigger that has it"
    )
    c.add_argument("--trigger-combine", choices=("any", "all"), default="any", help="several triggers: any or all")
    c.add_argument(
        "--fixed-settings",
        action="store_true",
        help="train with the strategies' settings as they are; by default, above 5,000 training rows, the "
        "batch size, learning rate, early stopping and a time budget are sized to the rows (not what --set gives)",
    )
    c.add_argument("--once", action="store_true", help="process what is in the inbox now, then exit")
    c.add_argument(
        "--interval", type=_checked(Interval(float, 0, low_open=True)), default=5.0, help="seconds between polls"
    )
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    gated(c)
    judged(c)
    tracked(c)
    budgeted(c)
    where(c)

    c = command("init", cmd_init, "create a store from a first batch and train its first model")
    tracked(c)
    c.add_argument("--store", required=True)
    c.add_argument("--data", required=True, help="the first batch: a Parquet, CSV or JSON Lines file")
    c.add_argument("--label", required=True, help="the label column")
    c.add_argument(
        "--model",
        default="mlp:20,10",
        help="mlp:UNITS,... (default mlp:20,10), a builder package.module:function, or a trained FILE.keras "
        "to import as the first version",
    )
    c.add_argument("--train", action="store_true", help="with --model FILE.keras: train it on the batch first")
    cols = c.add_mutually_exclusive_group()
    cols.add_argument(
        "--features",
        metavar="COL,...",
        help="the feature columns (names or patterns like x*); every other column is kept, not trained on",
    )
    cols.add_argument(
        "--ignore",
        metavar="COL,...",
        help="columns (names or patterns) to keep in the store and pass through predict, not train on",
    )
    c.add_argument(
        "--shape",
        action="append",
        type=_shape,
        metavar="COL=D1,D2,...",
        help="the shape of a list column's values, e.g. image=28,28,1 (repeatable; default: the list's length)",
    )
    c.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="default: regression for a float label with fractional values or over 20 distinct ones",
    )
    c.add_argument("--epochs", type=int, default=150)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--learning-rate", type=float, default=0.01)
    c.add_argument(
        "--holdout", type=_checked(HOLDOUT), default=0.2, help="fraction of each batch held out for evaluation"
    )
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")

    c = command("ingest", cmd_ingest, "validate and add new batches (Parquet, CSV or JSON Lines files)", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--new-classes", action="store_true", help="accept labels the store has not seen")
    c.add_argument("files", nargs="+", metavar="PARQUET")

    c = command("update", cmd_update, "run one strategy on the batches that arrived since the current model")
    c.add_argument("--store", required=True)
    c.add_argument("--strategy", required=True)
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="a strategy parameter (repeatable)")
    c.add_argument("--promote", choices=("auto", "always", "never"), default="auto")
    c.add_argument("--seed", type=_checked(SEED), default=0, help="fixes initialisation, sampling, shuffling")
    c.add_argument(
        "--actors",
        type=_checked(Interval(int, 0)),
        default=0,
        help="train data-parallel on N Ray actors, as the strategy declares (model averaging or bagging)",
    )
    c.add_argument(
        "--sync-steps",
        type=_checked(Interval(int, 1)),
        default=100,
        help="with --actors and model averaging: every K steps",
    )
    budgeted(c)
    gated(c)
    judged(c)
    tracked(c)
    where(c)

    c = command("inputs", cmd_inputs, "the inputs a store feeds a model, as keras.Input lines", needs_tf=False)
    c.add_argument("--store", help="an existing store")
    c.add_argument("--data", help="before a store exists: its first batch")
    c.add_argument("--label", help="with --data: the label column")
    c.add_argument(
        "--per-column", action="store_true", help="with --data: one input per numeric column instead of one group"
    )
    c.add_argument("--features", metavar="COL,...", help="with --data: as for init")
    c.add_argument("--ignore", metavar="COL,...", help="with --data: as for init")
    c.add_argument("--shape", action="append", type=_shape, metavar="COL=D1,D2,...", help="with --data: as for init")

    c = command("export", cmd_export, "write a version as one Keras model or a TensorFlow SavedModel")
    c.add_argument("--store", required=True)
    c.add_argument(
        "--out", required=True, type=written, help="FILE.keras, or a folder for a SavedModel (written as FOLDER/<n>/)"
    )
    c.add_argument("--version", default="current", help="an id, current (default), parent, or a unique prefix")
    c.add_argument("--format", choices=("keras", "saved_model"), help="default: keras for *.keras, else saved_model")

    c = command(
        "split", cmd_split, "write a first batch's training and holdout rows as init will split them", needs_tf=False
    )
    c.add_argument("--data", required=True, help="the file you will give init --data (Parquet, CSV or JSON Lines)")
    c.add_argument("--out-train", required=True, type=written, help="Parquet file for the training rows")
    c.add_argument("--out-holdout", required=True, type=written, help="Parquet file for the holdout rows")
    c.add_argument(
        "--holdout", type=_checked(HOLDOUT), default=0.2, help="the fraction init will hold out (its --holdout)"
    )

    c = command("serve", cmd_serve, "answer predictions over HTTP, reloading on promotion", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    c.add_argument("--port", type=_checked(Interval(int, 1, 65535)), default=8000)
    c.add_argument(
        "--poll", type=_checked(Interval(float, 0.1)), default=2.0, help="seconds between looks for a promoted version"
    )
    c.add_argument(
        "--workers",
        type=_checked(Interval(int, 1, 64)),
        help="server processes sharing the port (default: one per core)",
    )
    c.add_argument(
        "--batch-rows",
        type=_checked(Interval(int, 1, 100_000)),
        default=64,
        help="most rows scored in one model call when requests arrive together (1: no batching; default 64)",
    )
    c.add_argument(
        "--batch-wait-us",
        type=_checked(Interval(int, 0, 1_000_000)),
        default=0,
        help="microseconds a request waits for others to batch with (default 0: only those already waiting)",
    )
    c.add_argument("--max-body", type=_size, default=64 * 2**20, help="largest request body, e.g. 64MiB")
    c.add_argument("--token-file", help="a file holding a token requests must bear (Authorization: Bearer ...)")
    c.add_argument(
        "--log-sample",
        type=_checked(Interval(float, 0.0, 1.0)),
        default=1.0,
        help="fraction of answered rows kept in the store's prediction log (default 1; 0 keeps none)",
    )
    c.add_argument("--id-column", help="a column whose values key the rows in the log (default: request id + row)")
    c.add_argument("--shadow", help="a version that scores every request too, logged but never answering")
    where(c)
    c.add_argument(
        "--replicas",
        type=_checked(Interval(int, 1)),
        default=1,
        help="on Ray: replicas (the least, with --max-replicas)",
    )
    c.add_argument(
        "--max-replicas", type=_checked(Interval(int, 1)), help="on Ray: autoscale between --replicas and this many"
    )
    c.add_argument(
        "--replica-cpus",
        type=_checked(Interval(float, 0.0, low_open=True)),
        default=1.0,
        help="on Ray: CPUs per replica",
    )

    c = command("drift", cmd_drift, "ask the triggers whether rows drifted, keeping nothing", needs_tf=False)
    c.add_argument("--store", required=True)
    source = c.add_mutually_exclusive_group()
    source.add_argument("--data", help="a labelled file to judge (Parquet, CSV or JSON Lines)")
    source.add_argument("--served", action="store_true", help="judge the rows serve answered (the prediction log)")
    c.add_argument("--since", type=_duration, help="with --served: only the rows of this last while, e.g. 24h")
    c.add_argument("--trigger", help="triggers (default performance,features; with --served, features)")
    c.add_argument(
        "--trigger-set", action="append", metavar="KEY=VALUE", help="a parameter for every trigger that has it"
    )

    c = command("label", cmd_label, "join delayed labels to the prediction log and ingest them", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--data", required=True, help="a file of keys and labels (Parquet, CSV or JSON Lines)")
    c.add_argument("--key", default="id", help="the key column (the served rows' ids; default id)")
    c.add_argument("--label", help="the label column (default: the store's label)")
    c.add_argument(
        "--late-after",
        type=_duration,
        default=7 * 86400.0,
        help="count a label as late when its prediction is older than this (e.g. 12h, 7d; default 7d)",
    )
    c.add_argument(
        "--promote",
        choices=("never", "auto"),
        default="never",
        help="auto: promote a shadow candidate once its live metric beats the served one's (a tie keeps it)",
    )
    c.add_argument(
        "--min-shadow-rows",
        type=_checked(Interval(int, 1)),
        default=500,
        help="labelled rows a shadow candidate needs before --promote auto may promote it (default 500)",
    )

    c = command("predict", cmd_predict, "write predictions of a stored version", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, type=written, help="the Parquet file to write")
    c.add_argument(
        "--prediction-column",
        default="prediction",
        metavar="NAME",
        help="the column predictions go to (default prediction; the probability goes to NAME_probability)",
    )
    c.add_argument(
        "--version", default="current", help="a version: an id, current (default), parent, or a unique prefix or suffix"
    )
    c.add_argument(
        "--actors",
        type=_checked(Interval(int, 0)),
        default=0,
        help="score on N Ray actors, each reading its row groups",
    )
    where(c)

    c = command("batches", cmd_batches, "the store's batches: rows, when, learned, retired", needs_tf=False)
    c.add_argument("--store", required=True)

    c = command("drop", cmd_drop, "retire a batch: kept on disk and in lineage, never trained on again", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("batch", help="a batch id, or a unique prefix or suffix of one (see `ctrain batches`)")
    c.add_argument("--reason", help="why, kept in the store's event log")

    c = command(
        "verify",
        cmd_verify,
        "check every file against its sha256, CURRENT and the lineage (exit 1 on problems)",
        needs_tf=False,
    )
    c.add_argument("--store", required=True)

    c = command("history", cmd_history, "versions, lineage and metrics", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("--wide", action="store_true", help="every column: full ids, seconds, parameters")

    c = command("report", cmd_report, "the store's life on one HTML page and in Markdown, with plots", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument(
        "--out", type=written, help="folder or URI to write to (default: the store's reports/report-<time>/)"
    )

    c = command("promote", cmd_promote, "make a stored version current (compare-and-swap)", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument("version", help="an id, parent, or a unique prefix or suffix of an id")
    c.add_argument("--reason", help="why, kept in the store's event log")
    tracked(c)

    c = command(
        "rollback", cmd_rollback, "undo the last promotion: what was current before is current again", needs_tf=False
    )
    c.add_argument("--store", required=True)
    c.add_argument(
        "--to", metavar="VERSION", help="a version to make current instead; parent: the current version's parent"
    )
    c.add_argument("--reason", help="why, kept in the store's event log")
    tracked(c)

    c = command(
        "mlflow",
        cmd_mlflow,
        "sync: put MLflow's alias champion on the current version, in the tracking store the store recorded "
        "(or --mlflow URI)",
        needs_tf=False,
    )
    c.add_argument("action", choices=("sync",), help="sync: the registry's champion follows CURRENT again")
    c.add_argument("--store", required=True)
    tracked(c)

    c = command("gc", cmd_gc, "delete old versions that were never promoted", needs_tf=False)
    c.add_argument("--store", required=True)
    c.add_argument(
        "--keep", type=_checked(Interval(int, 0)), default=5, help="never-promoted versions to keep, newest first"
    )
    c.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    return p


def _quiet_third_parties() -> None:
    """Other libraries' warnings (Keras, NumPy, MLflow) are not the user's to read: shown only with
    CTRAIN_DEBUG=1. The project's own warnings and log lines stay."""
    import warnings

    if os.environ.get("CTRAIN_DEBUG") == "1":
        return
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"continual_trainer(\.|$)")
    for name in ("mlflow", "alembic", "urllib3", "absl", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (0, 1 when work failed, 2 for a user's mistake)."""
    from continual_trainer.data.errors import WorkFailed

    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(TerminalFormatter("ctrain: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    _quiet_third_parties()
    from continual_trainer.trainer.progress import Reporter, import_keras_quietly, phase, reporting

    address = os.environ.get("RAY_ADDRESS")  # --address names the cluster for this command only
    try:
        with reporting(None if args.quiet else Reporter(args.command)):
            if args.needs_tf:
                phase("starting TensorFlow")
                import_keras_quietly()
            args.func(args)
    except UserError as exc:
        return _fail(args, in_flags(exc), EXIT_USER_ERROR)
    except WorkFailed as exc:
        return _fail(args, str(exc), EXIT_WORK_FAILED)
    except (KeyboardInterrupt, Terminated) as exc:
        return _fail(args, *_stopped_by(exc))  # type: ignore[misc]
    except StoreDamaged as exc:
        return _fail(args, str(exc), EXIT_WORK_FAILED)
    except BrokenPipeError:  # the reader stopped reading (`ctrain history | head`): nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the machine: a full or read-only disk, permissions, too many open files
        code = EXIT_USER_ERROR if exc.errno in _ENVIRONMENT_ERRNOS else EXIT_WORK_FAILED
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return _fail(args, f"{exc.strerror or type(exc).__name__}{where}", code, debug=True)
    except Exception as exc:  # not the user's mistake: one line; the traceback under CTRAIN_DEBUG=1
        stop = _stopped_by(exc)
        if stop is not None:  # a signal raised inside native code (Ray's wait) arrives wrapped
            return _fail(args, *stop)
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return _fail(args, f"unexpected {type(exc).__name__}: {first[:300]}", EXIT_WORK_FAILED, debug=True)
    finally:
        if address is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = address
    return 0


# The Python API's argument names whose flag is not `--` + the name with dashes.
FLAGS = {
    "shapes": "--shape",
    "combine": "--trigger-combine",
    "params": "--set",
    "trigger_params": "--trigger-set",
    "train_out": "--out-train",
    "holdout_out": "--out-holdout",
}


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def in_flags(exc: UserError) -> str:
    """A user's mistake as the command line names it: the flag for the API's argument
    (`promote_on='x': ...` is `--promote-on x: ...`; a strategy's parameter `freeze=9: ...`
    is `--set freeze=9: ...`)."""
    if exc.option is None:
        return str(exc)
    if exc.group is not None:
        head = f"{flag(exc.group)} {exc.option}" + ("" if exc.value is None else f"={exc.value}")
    else:
        head = flag(exc.option) + ("" if exc.value is None else f" {exc.value}")
    return f"{head}: {exc.problem}"


def _stopped_by(exc: BaseException) -> tuple[str, int] | None:
    """("interrupted", 130) or ("terminated", 128 + N) if a signal's exception is in `exc`'s chain."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, KeyboardInterrupt):
            return "interrupted", EXIT_INTERRUPTED
        if isinstance(link, Terminated):
            return "terminated", 128 + link.signum
        link = link.__cause__ or link.__context__
    return None


_ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE, errno.EDQUOT}


def _fail(args: argparse.Namespace, message: str, code: int, debug: bool = False) -> int:
    """One line on stderr; with --json also one JSON object with the error on stdout.
    `debug`: with CTRAIN_DEBUG=1 the traceback of the exception being handled comes first."""
    if debug and os.environ.get("CTRAIN_DEBUG") == "1":
        traceback.print_exc()
    if _STANDALONE:  # first: Ray's error listener prints on stdout (an actor killed mid-task), never after the JSON
        _leave_ray()
    # column and file names are the user's: no escapes reach the terminal (JSON carries them as they are)
    print(terminal_safe(f"ctrain: error: {message}"), file=sys.stderr)
    if args.json:
        print(json.dumps({"error": message, "exit_code": code}), flush=True)
    return code


def run() -> NoReturn:
    """The `ctrain` console script: `main`, then leave without the interpreter's teardown.

    TensorFlow and Arrow keep native threads that may still hold Python objects when
    Python finalizes; dropping one then needs the GIL, which finalization no longer
    hands out, and the process aborts ("terminate called without an active
    exception", exit 134) after it has already printed its result. Everything a
    command writes is flushed (and store files fsynced) before it returns, so leaving
    with `os._exit` loses nothing; a local Ray this process started is shut down first.
    """
    # Both stop every command, also when started in the background by a shell, which starts
    # it with SIGINT ignored: the heavy work returns to Python often (see trainer.loop).
    global _STANDALONE
    _STANDALONE = True  # this process is the command: it leaves Ray before it prints an error
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # the terminal went away: stop as cleanly as for SIGTERM
    try:
        code = main()
    except SystemExit as exc:  # --help, --version and argparse's own errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER_ERROR)
    except BaseException:
        traceback.print_exc()
        code = EXIT_WORK_FAILED
    _leave(code)


def _leave_ray() -> None:
    """Disconnect from Ray if this process joined it (a local Ray it started stops)."""
    import continual_trainer as ct

    with contextlib.suppress(Exception):
        ct.leave_cluster()


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _leave(code: int) -> NoReturn:
    _leave_ray()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
