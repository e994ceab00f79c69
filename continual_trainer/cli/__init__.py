"""The `ctrain` command line: a thin layer over the Python API (`continual_trainer.api`).

One module per use case (a room), each holding its commands' options, handlers and output:
`store` (init, ingest, inputs, split, batches, drop, verify, gc), `updates` (update),
`sweeps`, `streams`, `serving` (predict, serve, export), `labels` (label, drift), `records`
(history, report, promote, rollback, mlflow) and `demo`. `options` declares what several
commands share once (the store, the seed, where work runs, the gate, MLflow); `output` prints
results and next steps; `program` assembles the parser and turns errors into exit codes.
"""

from continual_trainer.cli.options import EXIT_INTERRUPTED, EXIT_USER_ERROR, EXIT_WORK_FAILED, written
from continual_trainer.cli.program import FLAGS, Terminated, build_parser, flag, in_flags, main, run

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USER_ERROR",
    "EXIT_WORK_FAILED",
    "FLAGS",
    "Terminated",
    "build_parser",
    "flag",
    "in_flags",
    "main",
    "run",
    "written",
]
