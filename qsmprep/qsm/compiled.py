"""Compiled loops: numba kernels, cached on disk where possible, and the threads they run on.

The voxelwise steps of the reconstruction that numpy would do in many passes over memory
(TV-ADMM's splits, ROMEO's edge weights and region growing) are plain Python functions over
arrays, compiled here with numba (``nogil``, ``parallel`` where their outer loop is a
``prange``); each is compiled once per process, from the on-disk cache when there is one.
"""

from __future__ import annotations

import numba

_COMPILED: dict = {}


def compiled(function, *, parallel: bool = True):
    """``function`` compiled with numba: parallel loops (``numba.prange``) unless
    ``parallel`` is False; cached on disk where possible."""
    key = (function.__module__, function.__qualname__, parallel)
    kernel = _COMPILED.get(key)
    if kernel is None:
        try:
            kernel = numba.njit(cache=True, parallel=parallel, nogil=True)(function)
        except RuntimeError:  # no writable cache location (read-only install, no HOME)
            kernel = numba.njit(parallel=parallel, nogil=True)(function)
        _COMPILED[key] = kernel
    return kernel


class threads:
    """Run compiled parallel loops on ``count`` threads, restoring numba's setting after."""

    def __init__(self, count):
        self.count = int(count)

    def __enter__(self):
        self.previous = numba.get_num_threads()
        numba.set_num_threads(max(1, min(self.count, numba.config.NUMBA_NUM_THREADS)))
        return self

    def __exit__(self, *exc):
        numba.set_num_threads(self.previous)
        return False
