"""What the container image promises, checked on the installed command without a container.

The CLI runs as it would in a read-only image: a clean environment (PATH, LANG and HOME only;
no PYTHONPATH, no TEMPLATEFLOW_HOME), a HOME and a working folder it cannot write, a read-only
input dataset and read-only installed package, and no network.

How the folders are made read-only: permission bits do not bind root (the usual CI user), so
where mount and network namespaces are available (``unshare``; ``--map-root-user`` for other
users) the folders are bind-mounted read-only in a private mount namespace and the process
gets an empty network namespace. Without namespaces, a non-root user gets ``chmod a-w`` and a
Python audit hook that records every attempt to open a network connection; as root without
namespaces the tests are skipped, because nothing can then be made read-only.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from cli_helpers import tree_checksum

import qsmprep
import qsmprep.atlases
import qsmprep.workflows

QSMPREP = Path(sys.executable).with_name("qsmprep")
PREFIX = "sub-control/anat/sub-control"
DERIVATIVES = ("Chimap", "desc-brain_mask", "desc-phasequality_mask", "desc-localfield_mask",
               "desc-total_fieldmap", "desc-local_fieldmap", "R2starmap", "T2starmap")

# Records each attempt at a network connection (not local AF_UNIX sockets, which
# multiprocessing uses) in the file named by QSMPREP_NETWORK_LOG, and refuses it.
_AUDIT_HOOK = '''
import os, socket, sys
_LOG = os.environ.get("QSMPREP_NETWORK_LOG")
def _hook(event, args):
    if event == "socket.connect" and args[0].family != socket.AF_UNIX or \\
            event in ("socket.getaddrinfo", "socket.gethostbyname"):
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {args[1:]!r}\\n")
        raise OSError("network access attempted")
if _LOG:
    sys.addaudithook(_hook)
'''

# sh -c SCRIPT sh COUNT FOLDER... COMMAND...: bind-mounts COUNT folders read-only onto
# themselves, leaving the command in "$@"
_MOUNT_READ_ONLY = ('count=$1; shift; while [ "$count" -gt 0 ]; do '
                    'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" || exit 90; '
                    'shift; count=$((count - 1)); done')


def _namespace_command():
    """The ``unshare`` prefix giving private mount and network namespaces, or None."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return None
    command = ["unshare", "--mount", "--net"]
    if os.geteuid() != 0:
        command.insert(1, "--map-root-user")
    probe = Path(tempfile.mkdtemp(prefix="qsmprep-probe-"))
    try:
        script = f'{_MOUNT_READ_ONLY}; ! touch "$1/written" 2>/dev/null'
        completed = subprocess.run([*command, "sh", "-c", script, "sh", "1", str(probe),
                                    str(probe)],
                                   capture_output=True, timeout=60)
        ok = completed.returncode == 0 and not (probe / "written").exists()
    except (OSError, subprocess.SubprocessError):
        ok = False
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return command if ok else None


NAMESPACES = _namespace_command()
if NAMESPACES is None and os.geteuid() == 0:
    pytestmark = pytest.mark.skip(
        reason="running as root without mount namespaces (unshare): permission bits do not "
               "bind root, so no read-only folder can be made")


def _read_only_folders(bids_dir, home):
    """The input dataset, HOME, and the installed package (a read-only image's site-packages)."""
    folders = {Path(bids_dir), Path(home)}
    for module in (qsmprep, qsmprep.workflows, qsmprep.atlases):
        folders.add(Path(module.__file__).resolve().parent)
    for key in ("purelib", "platlib"):
        folders.add(Path(sysconfig.get_paths()[key]).resolve())
    return sorted(str(folder) for folder in folders)


class Sandbox:
    """Runs commands with the read-only folders, the clean environment and no network."""

    def __init__(self, base: Path, bids_dir: Path):
        self.base, self.bids_dir = base, bids_dir
        self.home = base / "home"
        self.home.mkdir()
        (base / "out").mkdir()
        (base / "work").mkdir()
        self.network_log = base / "network.log"
        for path in [bids_dir, *bids_dir.rglob("*")]:  # the input: chmod -R a-w
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
        self.home.chmod(0o555)
        self.env = {"PATH": f"{QSMPREP.parent}:/usr/bin:/bin", "LANG": "C.UTF-8",
                    "HOME": str(self.home)}
        if NAMESPACES is None:  # no network namespace: record connection attempts instead
            hook_dir = base / "hook"
            hook_dir.mkdir()
            (hook_dir / "sitecustomize.py").write_text(_AUDIT_HOOK)
            self.env.update(PYTHONPATH=str(hook_dir), QSMPREP_NETWORK_LOG=str(self.network_log))

    def run(self, *args, timeout=900):
        inner = " ".join(["env -i", *(shlex.quote(f"{key}={value}")
                                      for key, value in self.env.items()), '"$@"'])
        if NAMESPACES is not None:
            folders = _read_only_folders(self.bids_dir, self.home)
            script = f"{_MOUNT_READ_ONLY}; cd {shlex.quote(str(self.home))} && exec {inner}"
            command = [*NAMESPACES, "sh", "-c", script, "sh", str(len(folders)), *folders,
                       *map(str, args)]
        else:
            command = ["sh", "-c", f"cd {shlex.quote(str(self.home))} && exec {inner}", "sh",
                       *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def restore(self):
        for path in [self.bids_dir, *self.bids_dir.rglob("*"), self.home]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


@pytest.fixture(scope="module")
def sandbox(demo_bids):
    # not pytest's tmp_path: its folders are private to the user, which a mapped user may lack
    base = Path(tempfile.mkdtemp(prefix="qsmprep-container-"))
    bids_dir = base / "bids"
    shutil.copytree(demo_bids, bids_dir)  # a copy: its permissions are changed
    box = Sandbox(base, bids_dir)
    yield box
    box.restore()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def container_run(sandbox):
    """One participant-level run (QSM only: registration does not depend on the folders and
    the network, and doubles the run time) with one thread per process."""
    checksums = {"bids": tree_checksum(sandbox.bids_dir), "home": tree_checksum(sandbox.home)}
    started = time.monotonic()
    result = sandbox.run(QSMPREP, sandbox.bids_dir, sandbox.base / "out", "participant",
                         "--participant-label", "control", "-w", sandbox.base / "work",
                         "--nprocs", "2", "--omp-nthreads", "1", "--qsm-only")
    return {"result": result, "checksums": checksums, "seconds": time.monotonic() - started}


def test_sandbox_is_really_read_only_and_offline(sandbox):
    """The conditions hold for the process itself: writes and connections fail."""
    probe = ("import os, socket, sys\n"
             "for folder in sys.argv[1:]:\n"
             "    try:\n"
             "        open(os.path.join(folder, 'probe'), 'w').close()\n"
             "        print('wrote', folder)\n"
             "    except OSError:\n"
             "        pass\n"
             "try:\n"
             "    socket.create_connection(('192.0.2.1', 80), timeout=3)\n"
             "    print('connected')\n"
             "except OSError:\n"
             "    pass\n"
             "print('env', sorted(os.environ))\n")
    result = sandbox.run(sys.executable, "-c", probe, sandbox.bids_dir, sandbox.home,
                         Path(qsmprep.__file__).parent if NAMESPACES else sandbox.home)
    assert result.returncode == 0, result.stderr
    assert "wrote" not in result.stdout and "connected" not in result.stdout, result.stdout
    names = set(ast.literal_eval(result.stdout.split("env ", 1)[1]))
    assert "TEMPLATEFLOW_HOME" not in names
    if NAMESPACES is not None:  # the fallback needs PYTHONPATH for its audit hook
        assert names == {"PATH", "LANG", "HOME"}


def test_run_succeeds(container_run):
    result = container_run["result"]
    print(f"container run: {container_run['seconds']:.1f} s")
    assert result.returncode == 0, result.stderr[-4000:]


def test_derivatives_are_written(container_run, sandbox):
    output_dir = sandbox.base / "out"
    assert (output_dir / "dataset_description.json").is_file()
    for name in DERIVATIVES:
        for extension in (".nii.gz", ".json"):
            assert (output_dir / f"{PREFIX}_{name}{extension}").is_file(), name
    assert list((output_dir / "logs").glob("config-*.toml"))


def test_input_and_home_are_untouched(container_run, sandbox):
    assert tree_checksum(sandbox.bids_dir) == container_run["checksums"]["bids"]
    assert tree_checksum(sandbox.home) == container_run["checksums"]["home"]
    assert list(sandbox.home.iterdir()) == []


def test_threads_follow_omp_nthreads(container_run):
    stderr = container_run["result"].stderr
    assert re.search(r"Threads per process: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "
                     r"MKL_NUM_THREADS=1", stderr), stderr[-3000:]


def test_caches_go_to_a_private_temporary_folder(container_run):
    stderr = container_run["result"].stderr
    match = re.search(r"No writable cache folder in HOME; using (.*)", stderr)
    assert match, stderr[-3000:]
    moved = dict(item.split("=", 1) for item in match.group(1).split(", "))
    assert {"XDG_CACHE_HOME", "MPLCONFIGDIR"} <= set(moved)
    roots = {Path(value).parent for value in moved.values()}
    assert len(roots) == 1  # one private folder ...
    (root,) = roots
    assert root.name.startswith("qsmprep-runtime-") and not root.exists()  # ... removed at exit
    for complaint in ("Matplotlib created a temporary", "cannot cache function",
                      "NumbaWarning", "Read-only file system", "Permission denied"):
        assert complaint not in stderr, complaint


def test_no_network_was_attempted(container_run, sandbox):
    if NAMESPACES is not None:
        assert container_run["result"].returncode == 0  # ran with no network at all
    assert not sandbox.network_log.exists(), sandbox.network_log.read_text()


def test_embedded_template_is_used_offline(sandbox):
    """Registration needs the template: it comes from the package, never from the network."""
    probe = ("from qsmprep.atlases import TEMPLATE_DIR, template_files\n"
             "files = template_files()\n"
             "assert all(path.is_file() and path.parent == TEMPLATE_DIR "
             "for path in files.values()), files\n"
             "print('ok')\n")
    result = sandbox.run(sys.executable, "-c", probe)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
