"""The version requests are answered with, the watcher that swaps in a promoted one, and the
answer to a request's rows.

A watcher thread polls the store's `CURRENT` (with backoff while the store cannot be read); a
new version is loaded beside the old one (its files checked against their sha256), its scorer
built and warmed up on rows of the newest batch (a version that cannot score them is refused,
logged, and the old one keeps serving), then swapped in with one assignment: a request holds
the version it started with until it ends, and every answer names it.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from continual_trainer.predlog import Logged, PredictionLog
from continual_trainer.serve.edge import Decoder, RequestRows
from continual_trainer.serve.metrics import ServerMetrics
from continual_trainer.serve.scoring import Batcher, Inputs, Scorer
from continual_trainer.versions import stored_candidate

__all__ = ["Loaded", "Served"]

log = logging.getLogger("continual_trainer.serve")


@dataclass(frozen=True)
class Loaded:
    """A version ready to answer with: its id, its scorer, the batcher in front of it, and the
    class labels (or None for regression) its predictions index."""

    version: str
    scorer: Scorer
    batcher: Batcher
    labels: np.ndarray | None


_NUMBERS: list[str] = []


def _row_numbers(n: int) -> list[str]:
    """`["0", "1", ..., str(n - 1)]`, made once (a key per row is `<request>-<row>`)."""
    if len(_NUMBERS) < n:
        _NUMBERS.extend(map(str, range(len(_NUMBERS), max(n, 2 * len(_NUMBERS), 1024))))
    return _NUMBERS[:n]


class Served:
    """The version requests are answered with, and the watcher that swaps in a new one.

    Args:
        uri: the store.
        poll: seconds between looks at `CURRENT` (doubling, up to 60 s, while the store
            cannot be read).
        log_sample: the fraction of answered rows kept in the store's prediction log (0: none).
        id_column: a column of the rows whose values are their keys in the log (else each row's
            key is `<request id>-<row>`, and so is that of a row whose id is null).
        shadow: a version (reference) that scores every request too, without answering.
        one_at_a_time: swap under the store's `serve-swap` lock, so that the replicas of one
            deployment never reload together (Ray Serve).
        batch_rows: the most rows scored in one call when requests arrive together (1: each
            request alone).
        batch_wait: seconds a request waits for others to batch with (0: only those queued).
        metrics: where to count (None: counts of its own, never exposed).
    """

    def __init__(
        self,
        uri: str,
        poll: float = 2.0,
        log_sample: float = 1.0,
        id_column: str | None = None,
        shadow: str | None = None,
        one_at_a_time: bool = False,
        batch_rows: int = 64,
        batch_wait: float = 0.0,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.store = Store.open(uri)
        self.one_at_a_time = one_at_a_time
        self.schema = self.store.schema
        self.decoder = Decoder(self.schema, id_column)
        self.poll = poll
        self.id_column = id_column
        self.batch_rows, self.batch_wait = batch_rows, batch_wait
        self.metrics = metrics or ServerMetrics()
        self.current: Loaded | None = None
        self.reloads = 0
        self.refused: dict[str, str] = {}  # version -> why it could not be loaded
        self._refused_files: dict[str, tuple[tuple[str, int, int], ...]] = {}
        self.on_change: Callable[[str, str], None] | None = None  # (event, text): reloads and refusals
        self._pinned: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._warm: dict[str, np.ndarray] | None = None  # typed rows of the newest batch: a version warms up on them
        self._ids = itertools.count()
        self._prefix = uuid.uuid4().hex[:12]
        self.shadow_rows = self.shadow_agree = self.shadow_failed = 0
        self.shadow_abs = 0.0
        self.shadow = self.load(self.store.resolve(shadow), with_shadow=False) if shadow else None
        self.log = PredictionLog(self.store, self.schema, log_sample, counted=self._counted) if log_sample > 0 else None

    # -- versions --------------------------------------------------------------------------------

    def load(self, version: str, with_shadow: bool = True) -> Loaded:
        """`version` read from the store (each file checked against its sha256), its scorer built
        and warmed up on a few rows of the newest batch, ready to answer."""
        schema = self.store.schema  # a version may bring new classes
        scorer = Scorer(stored_candidate(self.store, version).for_scoring(), schema.n_classes)
        warm = self._warm if self._warm is not None else self._newest_rows()
        if warm is not None:
            scorer(schema.inputs_of(warm))
        labels = None if schema.is_regression else np.asarray(schema.classes)
        work = self._with_shadow(scorer) if with_shadow else lambda x: (scorer(x), None)
        return Loaded(version, scorer, Batcher(work, self.batch_rows, self.batch_wait), labels)

    def _newest_rows(self) -> dict[str, np.ndarray] | None:
        """A few rows of the newest batch, typed (to warm a version up on), or None."""
        from continual_trainer.data.parquet import table_from_bytes

        batches = self.store.batch_ids()
        if not batches:
            return None
        try:
            table = table_from_bytes(self.store.read_batch(batches[-1]), batches[-1]).slice(0, 8)
            self._warm = self.decoder.table(table).typed
        except (UserError, OSError):
            return None
        return self._warm

    def refresh(self) -> bool:
        """Swap in the store's current version if it changed and loads; True if it did."""
        version = self.store.current()
        if version is None or (self.current is not None and version == self.current.version):
            return False
        if version in self.refused:
            if self.store.fingerprint(version) == self._refused_files.get(version):
                return False
            log.info("version %s changed since it was refused; loading it again", version)
            del self.refused[version]
        if self.one_at_a_time:
            with self.store.lock("serve-swap"):
                return self._swap(version)
        return self._swap(version)

    def _swap(self, version: str) -> bool:
        try:
            loaded = self.load(version)
        except Exception as exc:  # a damaged or unreadable version: the old one keeps serving
            self.refused[version] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._refused_files[version] = self.store.fingerprint(version)  # tried again once its files change
            self.metrics.refused.set(len(self.refused))
            still = self.current.version if self.current else "nothing"
            self._tell(
                "refused", f"version {version} cannot be served ({self.refused[version]}); still serving {still}"
            )
            return False
        before = self.current
        self.current = loaded  # one assignment: a request keeps the Loaded it read
        self.reloads += 1
        gc.freeze()  # the models and libraries live as long as the server: collections skip them
        self.metrics.reloads.inc()
        if before is not None:  # the first version is announced by whoever started the server
            self._tell("reloaded", f"serving version {version} (was {before.version})")
        return True

    def _tell(self, event: str, text: str) -> None:
        (log.error if event == "refused" else log.info)("%s", text)
        if self.on_change is not None:
            self.on_change(event, text)

    def start(self) -> None:
        """Load the current version, then watch for promotions on a background thread."""
        if self._thread is not None:
            return
        self.refresh()

        def watch() -> None:
            wait = self.poll
            while not self._stop.is_set():
                self._wake.wait(wait)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.refresh()
                    wait = self.poll
                except Exception as exc:  # the store is unreachable for now: try again later
                    wait = min(60.0, wait * 2)
                    log.warning("cannot read the store (%s); next look in %.0f s", exc, wait)

        self._thread = threading.Thread(target=watch, name="ctrain-serve-watch", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look at `CURRENT` now (a push from whoever promoted), not at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Stop watching, and write what the prediction log holds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.log is not None:
            self.log.close()

    def pinned(self, ref: str) -> Loaded:
        """A version by reference (`ctrain history` ids, `current`, `parent`), kept loaded."""
        version = self.store.resolve(ref)
        current = self.current
        if current is not None and version == current.version:
            return current
        with self._lock:
            if version not in self._pinned:
                self._pinned[version] = self.load(version, with_shadow=False)
                while len(self._pinned) > 4:
                    self._pinned.popitem(last=False)
            self._pinned.move_to_end(version)
            return self._pinned[version]

    # -- answers ---------------------------------------------------------------------------------

    def request_id(self, given: str | None = None) -> str:
        """The id of a request: the client's (checked by the caller), else one of this server's."""
        return given or f"{self._prefix}{next(self._ids):x}"

    def inputs(self, rows: RequestRows) -> Inputs:
        return self.schema.inputs_of(rows.typed)

    def answer(self, loaded: Loaded, rows: RequestRows, request: str, scored: tuple[Any, Any]) -> dict[str, Any]:
        """The answer to a request whose rows `loaded` scored (`scored`: its predictions and the
        shadow's, or None): version, request id, the rows' keys, predictions (and probabilities).
        The rows go to the prediction log; UserError if a row has no finite prediction."""
        pred, shadow = scored
        if not np.isfinite(pred).all():
            finite = np.isfinite(pred).all(axis=1) if pred.ndim == 2 else np.isfinite(pred)
            raise UserError(
                f"request: version {loaded.version} gives no finite prediction for {int(np.count_nonzero(~finite))} "
                "row(s); their features are far outside what it was trained on"
            )
        predictions = pred if loaded.labels is None else loaded.labels[pred.argmax(axis=1)]
        keys = rows.keys
        ids = list(map(f"{request}-".__add__, _row_numbers(rows.n)))
        if keys is not None:
            ids = [k if k is not None else i for k, i in zip(keys, ids, strict=True)]
        answer: dict[str, Any] = {
            "version": loaded.version,
            "request_id": request,
            "ids": ids,
            "predictions": predictions if predictions.dtype.kind in "iufb" else predictions.tolist(),
        }
        if loaded.labels is not None:
            answer["probabilities"] = np.round(pred, 6)
        shadow_labels = None
        if shadow is not None and self.shadow is not None:
            shadow_labels = shadow if self.shadow.labels is None else self.shadow.labels[shadow.argmax(axis=1)]
            self._count_shadow(predictions, shadow_labels)
        if self.log is not None:
            self.log.add(
                Logged(
                    rows.typed,
                    rows.n,
                    keys,
                    request,
                    time.time(),
                    loaded.version,
                    predictions,
                    self.shadow.version if shadow_labels is not None and self.shadow else None,
                    shadow_labels,
                )
            )
        return answer

    def predict(self, table: pa.Table, loaded: Loaded, request: str | None = None) -> dict[str, Any]:
        """The answer for a table's rows (typed as requests are), scored at once: the in-process
        way to ask what the server would answer."""
        rows = self.decoder.table(table)
        return self.answer(loaded, rows, self.request_id(request), loaded.batcher.score(self.inputs(rows)))

    def _with_shadow(self, scorer: Scorer) -> Callable[[Inputs], tuple[Any, Any]]:
        """Scoring by `scorer` and, beside it, by the shadow candidate (its failure counted,
        never the request's)."""

        def work(x: Inputs) -> tuple[Any, Any]:
            pred = scorer(x)
            shadow = self.shadow
            if shadow is None or shadow.scorer is scorer or (self.current and shadow.version == self.current.version):
                return pred, None
            try:
                return pred, shadow.scorer(x)
            except Exception as exc:
                n = len(pred)
                self.shadow_failed += n
                self.metrics.shadow_failed.labels(shadow.version).inc(n)
                log.warning("shadow version %s failed on a request (%s)", shadow.version, exc)
                return pred, None

        return work

    def _count_shadow(self, served: np.ndarray, shadow: np.ndarray) -> None:
        assert self.shadow is not None
        v, n = self.shadow.version, len(served)
        self.shadow_rows += n
        self.metrics.shadow_rows.labels(v).inc(n)
        if self.schema.is_regression:
            diff = float(np.sum(np.abs(np.asarray(shadow, np.float64) - np.asarray(served, np.float64))))
            self.shadow_abs += diff
            self.metrics.shadow_difference.labels(v).inc(diff)
        else:
            agree = int(np.count_nonzero(shadow == served))
            self.shadow_agree += agree
            self.metrics.shadow_agreeing.labels(v).inc(agree)

    def _counted(self, outcome: str, rows: int) -> None:
        if outcome == "waiting":
            self.metrics.log_waiting.set(rows)
        else:
            self.metrics.logged(outcome, rows)
