"""The batch runs of a module join one local Ray cluster started by the test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    import ray

    from serve_app.testing.serve import local_ray

    started = not ray.is_initialized()
    # As many CPUs as a run's own local Ray declares (its actors and one task at a time):
    # more would start more planning workers at once, each importing Ray Data.
    yield local_ray(num_cpus=4)
    if started:
        ray.shutdown()  # the next modules start their own (an engine test wants none)
