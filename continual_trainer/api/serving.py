"""The API's serving room: predict, serve, delayed labels, and a version as one model."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from continual_trainer.api.base import StoreBase, _is_pandas, _table
from continual_trainer.data.errors import UserError

if TYPE_CHECKING:
    import keras


class Serving(StoreBase):
    """`ModelStore`'s methods that score rows, serve them and learn their labels."""

    def predict(self, data: Any, *, version: str = "current", prediction_column: str = "prediction") -> Any:
        """`data`'s rows plus `prediction` (and `probability` of class 1 for two classes), by
        `version` (an id, `current`, `parent`, or a unique prefix or suffix); with another
        `prediction_column`, that and `<name>_probability`. Columns that are not features pass
        through. Returns a DataFrame for a DataFrame, else an Arrow table."""
        from continual_trainer.data.batches import load_table
        from continual_trainer.data.parquet import redact
        from continual_trainer.scoring import predict_table

        if isinstance(data, str):
            _, table = load_table(data, self._store().schema.text_types())
            source = redact(data)
        else:
            table, source = _table(data), "the data"
        out = predict_table(self._store(), table, source, version=version, column=prediction_column)
        return out.to_pandas() if _is_pandas(data) else out

    def predict_file(
        self,
        data: str,
        out: str,
        *,
        version: str = "current",
        actors: int = 0,
        ray: bool | None = None,
        executor: str | None = None,
        prediction_column: str = "prediction",
    ) -> dict[str, Any]:
        """`predict` from a Parquet file or URI to another, without holding all rows (with
        `actors`, scored on that many Ray actors, each reading its own row groups; `ray` as for
        `update`). Returns {"rows", "version", "out", "executor"}."""
        from continual_trainer.executor import executor_name, make_executor
        from continual_trainer.scoring import predict

        runner = make_executor(executor_name(ray, actors, executor), actors=actors)
        with self._reporting("predict"):
            done = predict(self.uri, data, out, version=version, executor=runner, column=prediction_column)
            return {**done, "executor": runner.where}

    def serve(self, on_ready: Callable[[str], None] | None = None, console: bool = True, **options: Any) -> None:
        """Serve the current version over HTTP until interrupted, reloading it when a promotion
        changes it (`POST /predict`, `GET /health`, `/version`, `/metrics`, `/`; see
        `continual_trainer.serve`). `options` are `ServeOptions`' fields: `host` (127.0.0.1
        unless told otherwise), `port`, `poll`, `max_body`, `token` (requests but `/health` then
        need `Authorization: Bearer <token>`), `log_sample` (the fraction of rows kept in the
        prediction log; 0 keeps none), `id_column`, `shadow` (a version that scores every
        request too, logged, never answering), `workers` (processes sharing the port; default
        one per core), `batch_rows` and `batch_wait` (requests that arrive together are scored
        in one call of at most that many rows, a request waiting at most that many seconds for
        company). `on_ready(version)` is called once the version is loaded and the server
        answers; with `console`, a line on standard error for each version swapped in or
        refused, and when the server stops."""
        from continual_trainer.serve import ServeOptions, serve

        try:
            settings = ServeOptions(**options)
        except TypeError as exc:
            raise UserError(f"serve: {exc}") from None
        serve(self.uri, settings, on_ready=on_ready, console=console)

    def label(
        self,
        data: Any,
        *,
        key: str = "id",
        label: str | None = None,
        late_after: float = 7 * 86400.0,
        promote: str = "never",
        min_shadow_rows: int = 500,
    ) -> dict[str, Any]:
        """Join delayed labels (a Parquet file, a pandas DataFrame or an Arrow table with `key`
        and `label` columns; `label` defaults to the store's label) to the prediction log, and
        ingest the matched rows (the features as served, the label as arrived) as a new batch.
        Returns the counts (matched, unknown, duplicated, late), the batch, the versions that
        served the rows and their live metrics (and a shadow candidate's).

        With `promote="auto"`, a shadow candidate whose live metric over all labelled rows it
        scored (at least `min_shadow_rows`) is better than that of the versions that answered
        those rows is promoted (`promoted`: its id, `reason`: why)."""
        from continual_trainer.predlog import join_labels, live_metrics, shadow_verdict
        from continual_trainer.promotion import promote_by_hand

        if promote not in ("never", "auto"):
            raise UserError(f"label: promote must be 'never' or 'auto', not {promote!r}")
        store = self._store()

        def shadows_loadable(joined: Any) -> None:  # before anything is written: a failure consumes nothing
            from continual_trainer.versions import stored_candidate

            for version in sorted(joined.shadow):
                try:
                    stored_candidate(store, version)
                except UserError as exc:
                    raise UserError(
                        f"shadow version {version} cannot be promoted ({str(exc).removeprefix(store.display + ': ')}); "
                        "nothing was written: label again without promote='auto'"
                    ) from None

        with self._reporting("label"):
            source = data if isinstance(data, str) else _table(data)
            check = shadows_loadable if promote == "auto" else None
            out = join_labels(store, source, key=key, label=label, late_after=late_after, check=check).to_json()
        out["promoted"] = out["reason"] = None
        if promote == "auto":
            live = live_metrics(store)
            current = store.current()
            for version in sorted(out["shadow"]):
                why = shadow_verdict(store.schema, live, version, min_shadow_rows)
                if why is not None and version != current:
                    out["promoted"], out["reason"] = promote_by_hand(store, version, why)[0], why
                    if self._mirror is not None:
                        self._mirror.champion(out["promoted"], "label")
                    break
        return out

    def load_model(self, version: str = "current") -> keras.Model:
        """A version as one Keras model (default: the current one): a single network as it is,
        an ensemble as one functional model combining its members with their stored weights,
        so that `model.predict` gives what `predict` does. It takes the inputs the store feeds
        (`expected_inputs(store)`)."""
        from continual_trainer.scoring import load_model

        return load_model(self.uri, version)[0]

    def export(self, out: str, *, version: str = "current", format: str | None = None) -> dict[str, Any]:
        """Write a version as one model: `format` `keras` (a `.keras` file) or `saved_model`
        (TensorFlow Serving's layout, `out/<n>/saved_model.pb`; the default unless `out` ends
        in `.keras`). Returns where it went."""
        from continual_trainer.scoring import export_model

        return export_model(self.uri, out, version=version, fmt=format)
