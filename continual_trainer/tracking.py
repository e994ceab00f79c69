"""A mirror of the store's results in MLflow, for teams that track experiments there.

The store stays the source of truth: a version, a sweep or a stream event is committed
there first, then logged here as a run (a sweep as a parent run with one nested run per
trial). Nothing is read back from MLflow. Needs the optional extra
(`pip install 'continual-trainer[mlflow]'`); the tracking URI comes from `--mlflow URI`
or MLFLOW_TRACKING_URI, and the experiment is named after the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import redact

log = logging.getLogger(__name__)


class MlflowMirror:
    """Logs updates, sweeps and stream events of one store to an MLflow tracking store.

    Through an `MlflowClient` of its own: MLflow's fluent API would set the process's
    tracking URI (and MLFLOW_TRACKING_URI) for everything that runs after it.
    """

    def __init__(self, tracking_uri: str, store_uri: str, source: str | None = None) -> None:
        """`source`: where the URI came from, for messages (None: the `mlflow` argument)."""

        def mistake(value: str | None, problem: str) -> UserError:
            if source is None:
                return UserError.about("mlflow", value, problem)
            return UserError(f"{source}{'' if value is None else ' ' + value}: {problem}")

        try:
            from mlflow import MlflowClient
        except ImportError:
            raise mistake(
                None, "MLflow is not installed; install the extra: pip install 'continual-trainer[mlflow]'"
            ) from None
        # MLflow retries an unreachable server for minutes by default; a mirror must not hold
        # the store's work up (a user's own settings win).
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self._warned = False
        # One experiment per store, however its path was typed (relative or absolute).
        self._store = redact(store_uri if "://" in store_uri else os.path.abspath(store_uri))
        name = f"ctrain {self._store}"
        try:
            self._client = MlflowClient(tracking_uri=tracking_uri)
            found = self._client.get_experiment_by_name(name)
            self._experiment = found.experiment_id if found else self._client.create_experiment(name)
        except Exception as exc:  # MLflow raises its own types for unreachable or refused stores
            raise mistake(tracking_uri, f"cannot use this tracking store ({_one_line(exc)})") from None

    def _run(
        self,
        name: str,
        params: Mapping[str, Any],
        metrics: Mapping[str, Any],
        tags: Mapping[str, str],
        parent: str | None = None,
    ) -> str:
        """One finished run; returns its id ("" if the tracking store failed: the store's work is
        done and stays done, so a mirror that fails warns once and never fails the command)."""
        from mlflow.entities import Metric, Param, RunTag

        all_tags = {**tags, "ctrain.store": self._store, **({"mlflow.parentRunId": parent} if parent else {})}
        try:
            run = self._client.create_run(self._experiment, run_name=name, tags=all_tags)
            now = int(time.time() * 1000)
            self._client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, now, 0) for k, v in _numbers(metrics).items()],
                params=[Param(k, v) for k, v in _flat(params).items()],
                tags=[RunTag(k, v) for k, v in all_tags.items()],
            )
            self._client.set_terminated(run.info.run_id)
        except Exception as exc:  # the mirror is a copy: its failure is worth a warning, not an exit code
            if not self._warned:
                log.warning("MLflow: could not log %s (%s); the store is unaffected", name, _one_line(exc))
                self._warned = True
            return ""
        return run.info.run_id

    def log_update(self, outcome: Any, params: Mapping[str, Any], command: str, parent: str | None = None) -> str:
        """One run for a committed version: its parameters, metrics and lineage."""
        tags = {
            "ctrain.command": command,
            "ctrain.version": outcome.version,
            "ctrain.parent": outcome.parent or "",
            "ctrain.promoted": str(outcome.promoted).lower(),
            "ctrain.reason": outcome.reason,
        }
        return self._run(outcome.version, {"strategy": outcome.strategy, **params}, outcome.metrics, tags, parent)

    def log_sweep(self, result: Any, winner: Any = None) -> str:
        """A parent run for the sweep, a nested run per finished trial (and the saved winner)."""
        tags = {"ctrain.command": "sweep", "ctrain.sweep": result.sweep_id}
        sweep = self._run(result.sweep_id, {}, {"trials": result.trials, "finished": result.finished}, tags)
        for record in result.table.to_pylist() if result.finished else []:
            params = {"strategy": record["strategy"], "seed": record["seed"], **json.loads(record["params"])}
            metrics = {k: v for k, v in record.items() if k not in ("params", "seed")}
            self._run(record["trial_id"], params, metrics, {**tags, "ctrain.trial": record["trial_id"]}, sweep)
        if winner is not None:
            self.log_update(winner, {}, "sweep --promote best", parent=sweep)
        return sweep

    def log_stream_event(self, event: Any) -> str:
        """A run for each inbox file the stream handled."""
        tags = {
            "ctrain.command": "stream",
            "ctrain.status": event.status,
            "ctrain.version": event.version or "",
            "ctrain.promoted": str(event.promoted).lower(),
            "ctrain.reason": event.reason,
        }
        params = {"file": event.file, "strategy": event.strategy or ""}
        return self._run(
            f"{event.file} ({event.status})",
            params,
            {"rows": event.rows, "seconds": event.seconds, **event.drift},
            tags,
        )


def mirror_for(tracking_uri: str | None, store_uri: str) -> MlflowMirror | None:
    """The mirror `--mlflow URI` asks for, else MLFLOW_TRACKING_URI's if MLflow is installed
    (a variable set for other tools is no reason to fail), else None."""
    import importlib.util

    if tracking_uri:  # asked for: one that cannot be used is an error, found before any work
        return MlflowMirror(tracking_uri, store_uri)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and importlib.util.find_spec("mlflow") is not None:
        try:
            return MlflowMirror(uri, store_uri, source="MLFLOW_TRACKING_URI")
        except UserError as exc:  # set for other tools, or down: the store's work goes on unmirrored
            log.warning("%s; not mirroring to MLflow", exc)
    return None


HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _flat(params: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in params.items()}


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `values` (MLflow metrics are floats)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
