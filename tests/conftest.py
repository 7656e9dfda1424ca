"""Fixtures shared by the test modules (use them with pytest.mark.usefixtures)."""

from __future__ import annotations

import pytest


def _one_thread():
    """One torch thread while a test runs: tiny models run far faster on one thread when the
    shared test machine is oversubscribed (2-thread OpenMP barriers stall on busy cores; an smp
    U-Net step took 0.37 s with 1 thread vs ~3 s with 2)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    """One torch thread for one test."""
    yield from _one_thread()


@pytest.fixture(scope="module")
def single_thread_module():
    """One torch thread for a whole test module."""
    yield from _one_thread()


@pytest.fixture(scope="session", autouse=True)
def _pairforge_cache(tmp_path_factory):
    """Per-machine caches (the channels_last probe's results, torch.compile artifacts) go to
    a folder of this test session, not to the user's ~/.cache/pairforge; subprocesses that the
    tests start inherit it."""
    import os

    from pairforge.train.memory_format import CACHE_ENV

    folder = tmp_path_factory.mktemp("pairforge-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
