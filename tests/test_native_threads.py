"""The OpenMP cap scikit-learn's gradient boosting scores under."""

from __future__ import annotations

import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime the cap acts on)
from threadpoolctl import threadpool_info, threadpool_limits

from factory_pipelines.native_threads import openmp_threads


def openmp_thread_counts() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]


def test_the_cap_holds_inside_the_block_is_free_when_nested_and_is_undone_after() -> None:
    assert openmp_thread_counts(), "scikit-learn's OpenMP runtime should be loaded"
    with threadpool_limits(limits=2, user_api="openmp"):  # as on any machine with two cores or more
        assert openmp_thread_counts() == [2] * len(openmp_thread_counts())
        with openmp_threads(1) as outer:
            assert outer is not None and openmp_thread_counts() == [1] * len(openmp_thread_counts())
            with openmp_threads(1) as nested:  # already capped: nothing to set or restore
                assert nested is None
            with openmp_threads(0):  # never below one thread
                assert openmp_thread_counts() == [1] * len(openmp_thread_counts())
            assert openmp_thread_counts() == [1] * len(openmp_thread_counts())
        assert openmp_thread_counts() == [2] * len(openmp_thread_counts())
