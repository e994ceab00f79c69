"""A session-wide local Ray (2 CPUs, token authentication as Ray 2.60 sets it up)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from cluster.runtime import connect

    started = not ray.is_initialized()
    resources = connect(num_cpus=2)
    yield resources
    if started:
        ray.shutdown()
