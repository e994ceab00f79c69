"""Named points in the store's life cycle where a test can stop this process, or make it wait.

`CTRAIN_FAILPOINT=name` (or `name=exit:N`) makes the process leave at once with exit code N
(default 77) when it reaches the point named, as a `kill -9` would land there: no cleanup, no
`finally`. `name=sleep:S` makes it wait S seconds there instead; `name=wait:PATH` makes it create
`PATH.arrived` and wait until the file PATH exists (at most two minutes), so a test can see a
process (or thread) arrive at a point, hold it there while another runs, and release it: a race
by design, not by timing. Several points are separated
by commas. Unset, a point costs one dictionary lookup.

The points (see `POINTS`) are the moments where a crash could leave the store inconsistent if a
write were not atomic or a commit marker not written last; `tests/data/test_crash_points.py`
kills every command at each of them and checks the store with `ctrain verify`.
"""

from __future__ import annotations

import os
import time

WAIT_LIMIT = 120.0  # seconds a `wait:PATH` waits at most, so a test that fails never hangs

ENV = "CTRAIN_FAILPOINT"
POINTS = (
    "write.after-temp",  # a file's bytes in a temporary, not yet renamed into place
    "write.after-rename",  # the file in place
    "ingest.after-check",  # under the batch lock, the bytes found new, nothing written yet
    "ingest.after-data",  # a batch's data written, its marker not yet
    "version.after-members",  # a version's members written, its manifest not yet
    "version.after-manifest",  # a version committed, not yet promoted
    "promote.before-swap",  # under the CURRENT lock, the version checked, CURRENT not yet swapped
    "promote.after-swap",  # CURRENT swapped, the event not yet recorded
    "gc.after-listing",  # under the lock, the doomed versions chosen, none deleted yet
    "gc.after-manifest-delete",  # a version's manifest removed, its files not yet
    "init.after-store-json",  # store.json written, the first batch and version not yet
    "stream.before-read",  # an inbox file listed, not yet read (another stream may move it meanwhile)
    "label.before-commit",  # labels joined and checked, the batch and the labelled keys not yet written
)


def reached(name: str) -> None:
    """Leave the process, or wait, if `CTRAIN_FAILPOINT` names this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for item in spec.split(","):
        point, _, action = item.strip().partition("=")
        if point != name:
            continue
        kind, _, value = action.partition(":")
        if kind == "sleep":
            time.sleep(float(value or 1))
        elif kind == "wait":
            with open(value + ".arrived", "a"):
                pass
            deadline = time.monotonic() + WAIT_LIMIT
            while not os.path.exists(value) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            os._exit(int(value or 77))
