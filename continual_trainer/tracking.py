"""A mirror of the store's results in MLflow, for teams that track experiments there.

The store stays the source of truth: a version, a sweep or a stream event is committed
there first, then logged here as a run (a sweep as a parent run with one nested run per
trial). Each committed version's model (an ensemble as one Keras model) is logged with its
run in MLflow's Keras flavour and registered as a version of one registered model per store
(`ctrain-<store folder>` unless named); the store's current version carries the alias
`champion`, moved on every promotion and rollback, so `models:/<name>@champion` follows
`CURRENT`. The first time a store mirrors, it records where (`mlflow.json`: the tracking URI,
a relative SQLite path made absolute, and the registered model), and every later command on it
mirrors there without `--mlflow`: a promotion or rollback can never leave the alias behind
silently; if the tracking store cannot be reached, the command warns with the one that repairs
it (`ctrain mlflow sync --store S`, `sync` here). Nothing else is read back from MLflow. Needs the optional extra
(`pip install 'continual-trainer[mlflow]'`, which brings what a local `sqlite:///mlflow.db`
store needs); the tracking URI comes from `--mlflow URI` or MLFLOW_TRACKING_URI, and the
experiment is named after the store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
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

    def __init__(
        self, tracking_uri: str, store_uri: str, source: str | None = None, model_name: str | None = None
    ) -> None:
        """`source`: where the URI came from, for messages (None: the `mlflow` argument);
        `model_name`: the registered model (default `ctrain-<the store's folder name>`)."""

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
        if _file_store(tracking_uri) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
            raise mistake(
                tracking_uri,
                "is MLflow's file store, which MLflow 3 turns off (it has no model registry); use "
                "sqlite:///mlflow.db for a local tracking store, or an http(s):// tracking server",
            )
        self._warned = False
        self.tracking_uri = _absolute(tracking_uri)
        self._store_uri = store_uri
        folder = os.path.basename(store_uri.rstrip("/").split("?")[0]) or "store"
        self.model_name = model_name or f"ctrain-{folder}"
        # One experiment per store, however its path was typed (relative or absolute).
        self._store = redact(store_uri if "://" in store_uri else os.path.abspath(store_uri))
        name = f"ctrain {self._store}"
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
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
            self._warn(f"could not log {name}", exc)
            return ""
        return run.info.run_id

    def _warn(self, what: str, exc: Exception) -> None:
        if not self._warned:
            log.warning(
                "MLflow: %s (%s); the store is unaffected; `ctrain mlflow sync --store %s` puts the alias "
                "where CURRENT is once MLflow answers",
                what,
                _one_line(exc),
                self._store,
            )
            self._warned = True

    def _register(self, run_id: str, version: str) -> str | None:
        """Log `version`'s model with run `run_id` (MLflow's Keras flavour) and register it as a
        version of the store's registered model; its number, or None if MLflow failed."""
        try:
            import keras
            import mlflow.keras
            import tensorflow as tf

            from continual_trainer.scoring import load_model

            model = load_model(self._store_uri, version)[0]
            with tempfile.TemporaryDirectory() as tmp:
                folder = os.path.join(tmp, "model")
                requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
                mlflow.keras.save_model(model, folder, pip_requirements=requirements)
                self._client.log_artifacts(run_id, folder, "model")
            try:
                self._client.create_registered_model(self.model_name, tags={"ctrain.store": self._store})
            except Exception as exc:
                if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise
            source = f"{self._client.get_run(run_id).info.artifact_uri}/model"
            made = self._client.create_model_version(
                self.model_name, source, run_id=run_id, tags={"ctrain.version": version}
            )
        except Exception as exc:  # the mirror is a copy: warn, never fail the command
            self._warn(f"could not register {version} in the model registry", exc)
            return None
        return str(made.version)

    def _model_version(self, version: str) -> str | None:
        """The registered model version that holds `version`, or None."""
        for found in self._client.search_model_versions(f"name='{self.model_name}'"):
            if found.tags.get("ctrain.version") == version:
                return str(found.version)
        return None

    def champion(self, version: str, command: str = "promote") -> str | None:
        """Move the alias `champion` to `version` (registering it first if it never was); the
        registered model version it now names, or None if MLflow failed (warned)."""
        try:
            number = self._model_version(version)
            if number is None:
                run_id = self._run(version, {}, {}, {"ctrain.command": command, "ctrain.version": version})
                number = self._register(run_id, version) if run_id else None
            if number is not None:
                self._client.set_registered_model_alias(self.model_name, CHAMPION, number)
            return number
        except Exception as exc:  # the mirror is a copy: warn, never fail the command
            self._warn(f"could not move the alias {CHAMPION} to {version}", exc)
            return None

    def sync(self, version: str) -> str:
        """Put the alias `champion` on `version` (the store's current one): its registered model
        version. Raises UserError if MLflow refuses (this is the command's whole work)."""
        number = self.champion(version, "mlflow sync")
        if number is None:
            raise UserError(f"MLflow at {redact(self.tracking_uri)}: could not move the alias {CHAMPION} to {version}")
        return number

    def log_update(self, outcome: Any, params: Mapping[str, Any], command: str, parent: str | None = None) -> str:
        """One run for a committed version: its parameters, metrics and lineage."""
        tags = {
            "ctrain.command": command,
            "ctrain.version": outcome.version,
            "ctrain.parent": outcome.parent or "",
            "ctrain.promoted": str(outcome.promoted).lower(),
            "ctrain.reason": outcome.reason,
        }
        run_id = self._run(outcome.version, {"strategy": outcome.strategy, **params}, outcome.metrics, tags, parent)
        number = self._register(run_id, outcome.version) if run_id else None
        if number is not None and outcome.promoted:
            self.champion(outcome.version)
        return run_id

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
        run_id = self._run(
            f"{event.file} ({event.status})",
            params,
            {"rows": event.rows, "seconds": event.seconds, **event.drift},
            tags,
        )
        if run_id and event.version:
            number = self._register(run_id, event.version)
            if number is not None and event.promoted:
                self.champion(event.version)
        return run_id


def mirror_for(tracking_uri: str | None, store_uri: str, model_name: str | None = None) -> MlflowMirror | None:
    """The mirror `--mlflow URI` asks for, else MLFLOW_TRACKING_URI's if MLflow is installed
    (a variable set for other tools is no reason to fail), else None."""
    import importlib.util

    if tracking_uri:  # asked for: one that cannot be used is an error, found before any work
        return MlflowMirror(tracking_uri, store_uri, model_name=model_name)
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and importlib.util.find_spec("mlflow") is not None:
        try:
            return MlflowMirror(uri, store_uri, source="MLFLOW_TRACKING_URI", model_name=model_name)
        except UserError as exc:  # set for other tools, or down: the store's work goes on unmirrored
            log.warning("%s; not mirroring to MLflow", exc)
    return None


def recorded_mirror(store: Any, store_uri: str, strict: bool = False) -> MlflowMirror | None:
    """The mirror the store recorded the first time it mirrored, or None if it never did; one
    that cannot be used now (MLflow not installed, the server down) is a warning naming the
    command that repairs the registry later (`strict`: the UserError, for that command)."""
    recorded = store.mirror()
    if recorded is None:
        return None
    uri, model = recorded
    try:
        return MlflowMirror(uri, store_uri, source="the store's MLflow mirror", model_name=model)
    except UserError as exc:
        if strict:
            raise
        log.warning(
            "%s; MLflow's registry was not updated: `ctrain mlflow sync --store %s` puts the alias %s where "
            "CURRENT is once it can",
            exc,
            redact(store_uri),
            CHAMPION,
        )
        return None


def record(store: Any, mirror: MlflowMirror) -> None:
    """Remember `mirror` in the store (not a URI carrying a password: that stays the user's)."""
    if "@" in mirror.tracking_uri.split("://", 1)[-1].split("/", 1)[0]:
        log.warning("MLflow: a tracking URI with credentials is not recorded in the store; pass --mlflow each time")
        return
    store.record_mirror(mirror.tracking_uri, mirror.model_name)


def _absolute(uri: str) -> str:
    """A relative SQLite path (`sqlite:///mlflow.db`, relative to the working folder) made
    absolute, so the store's record names the same database from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/") and ":memory:" not in uri:
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


CHAMPION = "champion"  # the alias of the store's current version in the model registry


def _file_store(uri: str) -> bool:
    """Whether `uri` names MLflow's file store (a `file:` URI or a plain path)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme == "file" or (len(scheme) <= 1 and "://" not in uri)  # no scheme, or a Windows drive letter


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
