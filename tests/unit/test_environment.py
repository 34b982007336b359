"""configure_runtime: thread counts from --omp-nthreads, writable caches without a usable HOME."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from qsmprep.cli import environment
from qsmprep.cli.environment import CACHE_VARIABLES, THREAD_VARIABLES, configure_runtime


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """A private temporary folder for the runtime folders, so each test sees only its own."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _environ(home, **extra):
    """A minimal environment: HOME (None: unset) and the given variables."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if home is not None:
        environ["HOME"] = str(home)
    environ.update({name: str(value) for name, value in extra.items()})
    return environ


def _unusable_home(tmp_path):
    """A HOME that cannot be made, not even by root: its parent is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    return blocker / "home"


def test_thread_variables_follow_omp_nthreads(tmp_path, scratch_root):
    environ = _environ(tmp_path, OMP_NUM_THREADS=16, MKL_NUM_THREADS=16)
    changes = configure_runtime(omp_nthreads=3, environ=environ)
    for name in THREAD_VARIABLES:
        assert environ[name] == "3"  # the command-line option replaces inherited values
        assert changes[name] == "3"
    assert "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in environ  # set per registration


@pytest.mark.parametrize("value", [0, -2])
def test_omp_nthreads_must_be_positive(value):
    with pytest.raises(ValueError, match="at least 1"):
        configure_runtime(omp_nthreads=value, environ={})


def test_writable_home_changes_no_cache_folder(tmp_path, scratch_root):
    home = tmp_path / "home"
    home.mkdir()
    environ = _environ(home)
    changes = configure_runtime(omp_nthreads=1, environ=environ)
    assert set(changes) == set(THREAD_VARIABLES)
    assert not any(name in environ for name in CACHE_VARIABLES)
    assert list(scratch_root.iterdir()) == []  # no private folder made when none is needed
    assert list(home.iterdir()) == []  # nothing made in the user's home either


@pytest.mark.parametrize("case", ["unset", "missing", "relative"])
def test_unusable_home_gets_private_cache_folders(case, tmp_path, scratch_root):
    home = {"unset": None, "missing": _unusable_home(tmp_path), "relative": "home"}[case]
    environ = _environ(home)
    changes = configure_runtime(omp_nthreads=1, environ=environ)
    assert {"XDG_CACHE_HOME", "MPLCONFIGDIR", "NIPYPE_CONFIG_DIR"} <= set(changes)
    (private,) = scratch_root.iterdir()
    assert private.name.startswith(environment.SCRATCH_PREFIX)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # private to this user
    for name in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "NIPYPE_CONFIG_DIR"):
        assert environ[name].startswith(str(private)) and os.path.isdir(environ[name])
    # numba's user folder now lies in the writable XDG_CACHE_HOME
    assert environment._writable(os.path.join(environ["XDG_CACHE_HOME"], "numba"))


def test_unwritable_xdg_cache_moves_matplotlib_and_numba(tmp_path, scratch_root, monkeypatch):
    """An explicit but unusable XDG_CACHE_HOME is kept; matplotlib and numba (with a read-only
    installation) get their own folders."""
    monkeypatch.setattr(environment, "_installation_writable", lambda: False)
    unusable = _unusable_home(tmp_path)
    environ = _environ(unusable, XDG_CACHE_HOME=unusable / "cache")
    changes = configure_runtime(omp_nthreads=1, environ=environ)
    assert environ["XDG_CACHE_HOME"] == str(unusable / "cache")
    assert {"MPLCONFIGDIR", "NUMBA_CACHE_DIR"} <= set(changes)
    for name in ("MPLCONFIGDIR", "NUMBA_CACHE_DIR"):
        assert os.path.isdir(environ[name]) and environ[name].startswith(str(scratch_root))


def test_explicit_cache_folders_are_never_replaced(tmp_path, scratch_root, caplog):
    unusable = _unusable_home(tmp_path)
    writable = tmp_path / "mpl"
    environ = _environ(unusable, MPLCONFIGDIR=writable, NUMBA_CACHE_DIR=unusable / "numba")
    with caplog.at_level("WARNING", logger="qsmprep"):
        changes = configure_runtime(omp_nthreads=1, environ=environ)
    assert environ["MPLCONFIGDIR"] == str(writable)
    assert environ["NUMBA_CACHE_DIR"] == str(unusable / "numba")  # kept, with a warning
    assert "MPLCONFIGDIR" not in changes and "NUMBA_CACHE_DIR" not in changes
    assert "NUMBA_CACHE_DIR" in caplog.text and "cannot be written" in caplog.text


def test_private_folder_is_removed_by_its_own_process_only(tmp_path, scratch_root):
    folder = scratch_root / "made"
    folder.mkdir()
    environment._remove(folder, owner_pid=os.getpid() + 1)  # e.g. a forked worker exiting
    assert folder.is_dir()
    environment._remove(folder, owner_pid=os.getpid())
    assert not folder.exists()


_PROBE = """
import json, os, sys
import numpy  # loaded first, as the command line does: its BLAS pool already exists
from qsmprep.cli.environment import configure_runtime
changes = configure_runtime(omp_nthreads=1)
import scipy.linalg, threadpoolctl, matplotlib, numba
info = threadpoolctl.threadpool_info()
print(json.dumps({
    "pools": {pool["internal_api"]: pool["num_threads"] for pool in info},
    "mpl_cache": matplotlib.get_cachedir(),
    "numba_cache": numba.config.CACHE_DIR,
    "xdg": os.environ.get("XDG_CACHE_HOME"),
    "changes": changes,
}))
"""


def test_libraries_honour_the_settings_in_a_new_process(tmp_path):
    """In a fresh interpreter with an unusable HOME, 2 inherited OpenMP threads and numpy
    imported before the call, every BLAS and OpenMP pool has one thread and matplotlib uses
    the private folder."""
    pytest.importorskip("threadpoolctl")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "HOME": str(_unusable_home(tmp_path)), "OMP_NUM_THREADS": "2",
           "OPENBLAS_NUM_THREADS": "2", "TMPDIR": str(tmp_path)}
    completed = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                               text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["pools"], "no BLAS or OpenMP library found"
    assert set(report["pools"].values()) == {1}, report["pools"]
    assert report["xdg"].startswith(str(tmp_path))
    assert report["mpl_cache"] == report["changes"]["MPLCONFIGDIR"]  # not a folder of its own
    assert report["mpl_cache"].startswith(str(tmp_path / environment.SCRATCH_PREFIX))
    assert "Matplotlib created a temporary" not in completed.stderr
    assert not list(tmp_path.glob(environment.SCRATCH_PREFIX + "*"))  # removed at exit
