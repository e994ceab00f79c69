"""The API's records room: batches in and out, versions, reports, promotions and the mirror."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from continual_trainer.api.base import StoreBase, _encoded
from continual_trainer.data.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from continual_trainer.data.batches import IngestResult


class Records(StoreBase):
    """`ModelStore`'s methods that keep and read the store's records."""

    def ingest(self, data: Any, *, new_classes: bool = False) -> list[IngestResult]:
        """Validate and keep new labelled batches (one, or a list): files, Arrow tables or
        DataFrames. A batch the store holds already is a no-op; a bad one is quarantined and
        raises UserError (the ones before it are kept)."""
        from continual_trainer.store_setup import ingest_files

        items = data if isinstance(data, (list, tuple)) else [data]
        batches = [item if isinstance(item, str) else _encoded(item) for item in items]
        return ingest_files(self.uri, batches, allow_new_classes=new_classes)

    def batches(self) -> list[dict[str, Any]]:
        """Every batch in ingestion order: its id, source file name, rows, when it was ingested,
        whether the current version learned it, and its retirement (None, or when and why)."""
        store = self._store()
        current = store.current()
        learned = set(store.manifest(current).batches_seen) if current else set()
        retired = store.retired_batches()
        rows = []
        for batch_id in store.batch_ids():
            info = store.batch_info(batch_id)
            rows.append(
                {
                    "batch": batch_id,
                    "source": info.get("source"),
                    "rows": info.get("rows"),
                    "ingested": info.get("ingested"),
                    "learned_by_current": batch_id in learned,
                    "retired": retired.get(batch_id),
                }
            )
        return rows

    def drop(self, batch: str, *, reason: str = "") -> str:
        """Retire a batch (its id, or a unique prefix or suffix of it): kept byte for byte and in
        every lineage, never trained on or scored again. Returns its id."""
        store = self._store()
        ids = store.batch_ids()
        found = [b for b in ids if b == batch] or [b for b in ids if b.startswith(batch) or b.endswith(batch)]
        if len(found) != 1:
            what = "no batch" if not found else f"{len(found)} batches"
            raise UserError(f"{store.display}: {batch!r} names {what}; see `ctrain batches`")
        if not store.retire_batch(found[0], reason):
            raise UserError(f"{store.display}: batch {found[0]} is retired already")
        return found[0]

    def verify(self) -> tuple[list[str], list[str]]:
        """Check the whole store: every file against its sha256, CURRENT (present whenever a
        promotion was recorded), the lineage for gaps, the prediction log (every file readable in
        the log's one schema), the labelled keys and retired batches: (problems, notes); see
        `ctrain verify`."""
        from continual_trainer.predlog import LogReader

        store = self._store()
        problems, notes = store.verify()
        reader = LogReader(store, warn=False)
        for name in store.prediction_logs():
            reader.file(name)
        known = " ".join(problems)
        problems += [f"prediction log file {name} cannot be read in the log's schema; `drift --served`, `label` and "
                     "the stream skip it" for name in reader.skipped if name not in known]  # fmt: skip
        return problems, notes

    def history(self) -> pd.DataFrame:
        """One row per version, oldest first: lineage, strategy, parameters in short, holdout
        size and metrics, whether it is or ever was current, and `same_holdout` (scored on the
        current version's holdout rows, so its metrics compare with the current one's)."""
        import pandas as pd

        flat = [{**r["metrics"], **{k: v for k, v in r.items() if k != "metrics"}} for r in self.versions()]
        return pd.DataFrame(flat)

    def versions(self) -> list[dict[str, Any]]:
        """`history`'s rows as dicts, each version's metrics under "metrics"."""
        from continual_trainer.records import history

        return history(self.uri)

    def report(self, out: str | None = None) -> str:
        """Write `ctrain report`'s page, Markdown and plots (by default into the store under
        `reports/`); returns the page's location."""
        return str(self.write_report(out)["page"])

    def write_report(self, out: str | None = None) -> dict[str, Any]:
        """`report`, returning {"folder", "page", "files"} (the files' names in the folder)."""
        from continual_trainer.records import store_report

        folder, files = store_report(self.uri, out)
        return {"folder": folder, "page": f"{folder}/index.html", "files": files}

    def promote(self, version: str, *, reason: str = "") -> str:
        """Make a stored version current (compare-and-swap; recorded with `reason`); returns its id."""
        from continual_trainer.promotion import promote_by_hand

        made = promote_by_hand(self._store(), version, reason)[0]
        if self._mirror is not None:
            self._mirror.champion(made)
        return made

    def rollback(self, to: str | None = None, *, reason: str = "") -> str:
        """Undo the last change of the current version (back to what was current before it; a
        second call redoes it), or make `to` current (`"parent"`: the lineage parent); returns
        the id made current."""
        from continual_trainer.promotion import rollback

        made = rollback(self._store(), to, reason)[0]
        if self._mirror is not None:
            self._mirror.champion(made, "rollback")
        return made

    def gc(self, keep: int = 5, *, dry_run: bool = False) -> list[str]:
        """Delete versions that were never promoted, but the `keep` newest of them; never the
        current version or its lineage. Returns the versions deleted (or, dry, that would be)."""
        from continual_trainer.records import prune

        return prune(self.uri, keep, dry_run=dry_run)

    def mlflow_sync(self) -> dict[str, str]:
        """Put MLflow's alias `champion` on the current version (registering it if it never
        was), in the tracking store given to `open_store` or the one the store recorded.
        Returns the registered model, its version number and the store's version."""
        from continual_trainer.tracking import recorded_mirror

        store = self._store()
        current = store.current()
        if self._given_mirror is None:  # the recorded one; one that cannot be used is this command's error
            self._resolved_mirror = recorded_mirror(store, self.uri, strict=True)
        mirror = self._mirror
        if mirror is None:
            raise UserError(
                f"{self.uri}: this store has never mirrored to MLflow; give the tracking URI: "
                "ctrain mlflow sync --store S --mlflow URI"
            )
        if current is None:
            raise UserError(f"{self.uri}: the store has no current version yet")
        number = mirror.sync(current)
        return {"model": mirror.model_name, "model_version": number, "version": current}
