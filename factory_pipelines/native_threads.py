"""Capping scikit-learn's native (OpenMP) thread pools while fitting or scoring.

Gradient boosting starts one OpenMP thread per core, and on a busy machine those threads spin-wait
for cores other processes hold: measured on 2 shared cores, one fit went from 156 s to 3.8 s and
one prediction from 3.1 s to 0.1 s with a single thread. Scoring a window's few rows gains nothing
from more threads.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any

from threadpoolctl import ThreadpoolController

SCORING_THREADS = 1


@cache
def _thread_pools() -> ThreadpoolController:
    # Scanning the loaded libraries costs milliseconds to tens of ms: once per process, not per call
    # (a `threadpool_limits(...)` per window cost 3.3 ms, a third of a cyber window's scoring).
    return ThreadpoolController()


def openmp_threads(threads: int) -> AbstractContextManager[Any]:
    """At most `threads` OpenMP threads inside the block.

    Free inside a block that already caps them: a prediction run caps once around its windows, and
    setting then restoring the limit for each window's call cost 0.1 ms, a fiftieth of its scoring.
    """
    threads = max(1, threads)
    controller = _thread_pools()
    if all(lib.num_threads <= threads for lib in controller.lib_controllers if lib.user_api == "openmp"):
        return nullcontext()
    return controller.limit(limits=threads, user_api="openmp")
