"""Joining a Ray cluster (or starting an embedded one), configuring workers, and getting results."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from continual_trainer.data.errors import UserError

log = logging.getLogger(__name__)


def connect(num_cpus: int | None = None) -> dict[str, Any]:
    """Join the cluster named by RAY_ADDRESS, or start a local Ray; return its resources.

    Idempotent. Ray's token authentication stays as Ray configures it (on by default
    in 2.60: a local Ray generates its token; a cluster's comes from RAY_AUTH_TOKEN or
    `ray get-auth-token`). Workers of a local Ray get the current folder (where a
    user's model builder may be) and this package's folder on their PYTHONPATH.
    """
    import ray

    if not ray.is_initialized():
        from continual_trainer.trainer.progress import phase

        phase("joining the Ray cluster" if os.environ.get("RAY_ADDRESS") else "starting a local Ray")
        env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
        address = os.environ.get("RAY_ADDRESS")
        if not address:  # the current folder (a user's model builder), and where this package is
            paths = (os.getcwd(), os.environ.get("PYTHONPATH"), _package_parent())
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        with _signals_held():
            try:
                ray.init(
                    address=address or "local",
                    num_cpus=None if address else num_cpus,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    runtime_env={"env_vars": env},
                )
            except ConnectionError as exc:
                raise UserError(f"RAY_ADDRESS={address}: cannot join the Ray cluster ({exc})") from None
        log.info("connected to Ray at %s", address or "a new local instance")
    return ray.cluster_resources()


_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold this process's own signal handlers (the CLI's: stop cleanly with 130/143/129)
    while Ray starts, and act on a signal that came meanwhile once it has started.

    `ray.init` replaces a SIGTERM handler with its own (`sys.exit(15)`, then one that tears
    its half-started node down with exit 1), and its core worker puts a native one (a stack
    dump, exit 1) in their place; a signal in those seconds left Ray's agents running. Held,
    the signal stops the command once `ray.init` has returned, and the Ray it started stops
    with the command's `disconnect`. Without Python handlers (a library caller's process)
    Ray's own stay as Ray sets them. A signal in the last moment of `ray.init`, after the core
    worker started, still gets the native handler's stack dump too (exit code and cleanup hold).
    """
    handlers = {}
    for name in _SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and callable(handler := signal.getsignal(number)):
            handlers[number] = handler
    if not handlers or threading.current_thread() is not threading.main_thread():
        yield
        return
    import ray._private.utils as ray_utils

    came: list[int] = []
    for number in handlers:
        signal.signal(number, lambda signum, frame: came.append(signum))
    replace = getattr(ray_utils, "set_sigterm_handler", None)
    if replace is not None:  # Ray's driver and node handlers are not installed meanwhile
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if replace is not None:
            ray_utils.set_sigterm_handler = replace
        for number, handler in handlers.items():
            signal.signal(number, handler)
        if came:  # the CLI's handler raises its exception here, as if the signal came now
            handlers[came[0]](came[0], None)


def _package_parent() -> str:
    """The folder `continual_trainer` is imported from (site-packages, or a checkout)."""
    import continual_trainer

    return os.path.dirname(os.path.dirname(os.path.abspath(continual_trainer.__file__)))


def disconnect() -> None:
    """Leave the cluster; a local Ray this process started stops with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def describe() -> str:
    """Where Ray work runs, in words: the cluster's address or a local Ray, and its CPUs."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    address = os.environ.get("RAY_ADDRESS")
    return f"the Ray cluster at {address} ({cpus} CPUs)" if address else f"a local Ray started here ({cpus} CPUs)"


def get(refs: Any) -> Any:
    """`ray.get`, with a user's mistake raised on a worker turned back into the same UserError,
    and work that failed there (`WorkFailed`) into WorkFailed."""
    import ray

    from continual_trainer.executor import WorkFailed

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise UserError(str(exc.cause)) from None
        if isinstance(exc.cause, WorkFailed):
            raise WorkFailed(str(exc.cause)) from None
        raise


def kill(actors: Sequence[Any]) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)


def pin_threads() -> int:
    """Size TensorFlow's and Arrow's CPU thread pools to the CPUs Ray gave this worker.

    Returns that number. Without it each worker would start a thread per core of the
    machine and workers would fight over cores. TensorFlow's pools can only be set
    before the worker's first op; later calls leave them as they are.
    """
    import pyarrow as pa
    import ray

    from continual_trainer.trainer.progress import import_keras_quietly

    import_keras_quietly()  # first, as the CLI does: without the Keras imports this tool never uses
    import tensorflow as tf

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    n = max(1, round(cpus))
    pa.set_cpu_count(n)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        pass  # already initialised by an earlier task on this worker
    return n
