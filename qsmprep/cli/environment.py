"""Run-time environment of a qsmprep process: threads per process and writable caches.

qsmprep runs from read-only installations (container images, shared software trees) for users
whose ``HOME`` may be unset, missing or read-only. Three libraries write files outside the
output and work folders:

* matplotlib makes its configuration folder (``~/.config/matplotlib``) and keeps a font
  cache (``~/.cache/matplotlib``), both in ``$MPLCONFIGDIR`` when that is set; without
  writable ones it warns and rebuilds the cache in every process;
* numba keeps compiled kernels (``cache=True`` in :mod:`qsmprep.qsm.unwrapping` and
  :mod:`qsmprep.qsm.inversion`) beside the source in ``__pycache__``, else in
  ``$NUMBA_CACHE_DIR`` or ``~/.cache/numba``; with none writable it cannot cache, and every
  worker process compiles the kernels again (several seconds each);
* nipype reads its configuration from ``$NIPYPE_CONFIG_DIR`` (``~/.nipype``) and may write a
  small state file there.

:func:`configure_runtime` points those places to a private folder under
:func:`tempfile.gettempdir` only when the defaults cannot be written, and never replaces a
folder the user named explicitly. It also sets the thread counts of the numerical libraries
from ``--omp-nthreads``. It must run before the nipype worker processes start (they inherit
the environment) and before matplotlib, numba or nipype are first imported: the ``qsmprep``
command calls it right after parsing the command line.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

LOGGER = logging.getLogger("qsmprep")

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
"""Thread counts of OpenMP, OpenBLAS, MKL, numexpr and Accelerate, all set to
``--omp-nthreads``. ANTs is not among them: :mod:`qsmprep.registration` sets
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for each ``antsRegistration`` process it starts, and
the numba kernels take their thread count from each node's ``num_threads``."""

CACHE_VARIABLES = ("XDG_CACHE_HOME", "MPLCONFIGDIR", "NUMBA_CACHE_DIR", "NIPYPE_CONFIG_DIR")
"""Cache and configuration folders; a value set by the user is never replaced."""

SCRATCH_PREFIX = "qsmprep-runtime-"
"""Prefix of the private folder made under :func:`tempfile.gettempdir` when needed."""


def configure_runtime(*, omp_nthreads: int, environ=None) -> dict:
    """Set the thread counts and make sure the caches of matplotlib, numba and nipype are
    writable.

    Parameters
    ----------
    omp_nthreads : int
        Threads per process (``--omp-nthreads``); written to every name in
        :data:`THREAD_VARIABLES`, replacing values inherited from the shell, because the
        command-line option is the more explicit setting. BLAS and OpenMP libraries that
        numpy or scipy loaded before this call are limited as well (with threadpoolctl),
        when ``environ`` is the process's own.
    environ : mapping, optional
        The environment to change; :data:`os.environ` (the process's own, inherited by every
        process it starts) by default.

    Returns
    -------
    dict
        Every variable that was set, name to value: the thread counts, then, where a default
        place was not writable, ``XDG_CACHE_HOME``, ``MPLCONFIGDIR``, ``NUMBA_CACHE_DIR`` and
        ``NIPYPE_CONFIG_DIR`` (sub-folders of one private folder under
        :func:`tempfile.gettempdir`, removed when the process that made it exits).

    Rules for the caches (a variable already set by the user is always kept):

    * ``XDG_CACHE_HOME`` when ``~/.cache`` cannot be written (HOME unset, missing or
      read-only);
    * ``MPLCONFIGDIR`` when matplotlib's configuration folder (``$XDG_CONFIG_HOME/matplotlib``
      or ``~/.config/matplotlib``) or cache folder (``$XDG_CACHE_HOME/matplotlib`` or
      ``~/.cache/matplotlib``) cannot be written;
    * ``NUMBA_CACHE_DIR`` when neither the ``__pycache__`` folder of :mod:`qsmprep.qsm` (a
      read-only installation) nor numba's user folder (``$XDG_CACHE_HOME/numba``, or
      ``~/.cache/numba``) can be written;
    * ``NIPYPE_CONFIG_DIR`` when ``~/.nipype`` does not exist and cannot be made.

    A folder named by the user that cannot be written is kept, with a warning: numba then
    compiles its kernels in every process (qsmprep's kernels fall back to uncached
    compilation) and matplotlib uses a temporary folder of its own.

    A folder "can be written" when it, or the nearest folder above it that exists, is a
    folder this process may write into. No folder is made in the user's home.
    """
    if omp_nthreads < 1:
        raise ValueError(f"omp_nthreads must be at least 1, got {omp_nthreads}")
    environ = os.environ if environ is None else environ
    changes = {}
    for name in THREAD_VARIABLES:
        environ[name] = str(int(omp_nthreads))
        changes[name] = environ[name]

    if environ is os.environ:
        _limit_loaded_libraries(omp_nthreads)

    for name in CACHE_VARIABLES:  # the user's choice is kept, but say why it may be slow
        if environ.get(name) and not _writable(environ[name]):
            LOGGER.warning("%s=%s cannot be written; the cache there will not be used",
                           name, environ[name])

    scratch = _Scratch()
    home_cache = _expand("~/.cache", environ)
    if not environ.get("XDG_CACHE_HOME") and not _writable(home_cache):
        changes.update(_point(environ, "XDG_CACHE_HOME", scratch.folder("cache")))

    user_cache = Path(environ.get("XDG_CACHE_HOME") or home_cache or "~")
    user_config = Path(environ.get("XDG_CONFIG_HOME") or _expand("~/.config", environ) or "~")
    if not environ.get("MPLCONFIGDIR") and not (_writable(user_cache / "matplotlib")
                                                and _writable(user_config / "matplotlib")):
        changes.update(_point(environ, "MPLCONFIGDIR", scratch.folder("matplotlib")))

    if (not environ.get("NUMBA_CACHE_DIR") and not _installation_writable()
            and not _writable(user_cache / "numba")):
        changes.update(_point(environ, "NUMBA_CACHE_DIR", scratch.folder("numba")))
        if environ is os.environ and "numba" in sys.modules:  # imported already: tell it too
            sys.modules["numba"].config.CACHE_DIR = environ["NUMBA_CACHE_DIR"]

    if not environ.get("NIPYPE_CONFIG_DIR") and not _writable(_expand("~/.nipype", environ)):
        changes.update(_point(environ, "NIPYPE_CONFIG_DIR", scratch.folder("nipype")))

    threads = " ".join(f"{name}={changes[name]}" for name in THREAD_VARIABLES)
    LOGGER.info("Threads per process: %s", threads)
    moved = {name: value for name, value in changes.items() if name not in THREAD_VARIABLES}
    if moved:
        LOGGER.info("No writable cache folder in HOME; using %s",
                    ", ".join(f"{name}={value}" for name, value in moved.items()))
    return changes


def _limit_loaded_libraries(omp_nthreads: int) -> None:
    """Apply the thread count to BLAS and OpenMP libraries that are loaded already (numpy and
    scipy read the variables only when they are first imported); worker processes forked from
    this one keep the limit."""
    if not any(name in sys.modules for name in ("numpy", "scipy")):
        return
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - a dependency of scikit-learn
        LOGGER.debug("threadpoolctl is missing: loaded libraries keep their thread counts")
        return
    threadpoolctl.threadpool_limits(limits=int(omp_nthreads))


def _installation_writable() -> bool:
    """Whether numba can cache the kernels beside their source (``qsmprep/qsm/__pycache__``)."""
    return _writable(Path(__file__).resolve().parents[1] / "qsm" / "__pycache__")


def _expand(path: str, environ) -> Path | None:
    """``path`` with ``~`` replaced by ``environ["HOME"]``; ``None`` when HOME is unset or
    relative (a home taken from the password database may not exist in a container)."""
    home = environ.get("HOME")
    if not home or not os.path.isabs(home):
        return None
    return Path(home) / path.removeprefix("~/")


def _writable(folder) -> bool:
    """Whether this process can write into ``folder``, or make it: the nearest existing folder
    at or above it must be a folder with write and search permission (a read-only file system
    counts as not writable, also for root). ``None`` and relative paths count as not
    writable."""
    if folder is None or not os.path.isabs(folder):  # relative: depends on the working folder
        return False
    path = Path(folder)
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _point(environ, name: str, folder) -> dict:
    """Set ``environ[name]`` to ``folder`` when the folder could be made."""
    if folder is None:
        return {}
    environ[name] = str(folder)
    return {name: environ[name]}


class _Scratch:
    """One private folder under the temporary folder, made on first use and removed when the
    process that made it exits (not by worker processes forked from it)."""

    def __init__(self):
        self.root = None
        self.failed = False

    def folder(self, name: str) -> Path | None:
        if self.root is None and not self.failed:
            try:
                self.root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            except OSError as error:
                LOGGER.warning("Could not make a cache folder under %s (%s); caches are "
                               "disabled", tempfile.gettempdir(), error)
                self.failed = True
                return None
            atexit.register(_remove, self.root, os.getpid())
        if self.root is None:
            return None
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path


def _remove(folder: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)
