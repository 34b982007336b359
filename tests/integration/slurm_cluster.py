"""A throw-away single-host SLURM cluster on localhost for the end-to-end tests.

Everything lives in one folder: the munge key and socket, ``slurm.conf``, the controller's
state, the node's spool, the logs and, for job accounting, a private MariaDB server and
``slurmdbd``. The daemons run in the foreground as children of the test process, on free TCP
ports, so the cluster needs no system configuration and disappears with :meth:`stop`.
Clients (``sbatch``, ``squeue``, ``sacct``) find it through ``SLURM_CONF`` in :attr:`env`.

Needs root (``slurmd`` launches jobs as their owner), Debian's ``slurm-wlm`` and ``munge``
and, for ``sacct``, ``slurmdbd`` and ``mariadb-server``; :func:`missing_requirements` says what
is absent so that the tests can skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CLUSTER_NAME = "qsmprep"
PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "sacct", "scontrol")
ACCOUNTING = ("slurmdbd", "mariadbd", "mariadb-install-db", "sacctmgr")
SBIN = ("/usr/sbin", "/sbin", "/usr/bin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in SBIN:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (a sentence), or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs as their owner)"
    absent = [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]
    if absent:
        return ("SLURM is not installed (missing " + ", ".join(absent)
                + "); install Debian's slurm-wlm and munge")
    return None


def accounting_available() -> bool:
    """Whether slurmdbd and a MariaDB server are installed (for sacct)."""
    return all(_which(name) for name in ACCOUNTING)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


class ClusterError(RuntimeError):
    """The local cluster did not come up; the message carries the relevant log."""


class LocalSlurmCluster:
    """Start with :meth:`start`, use :attr:`env` for the clients, end with :meth:`stop`.

    Parameters
    ----------
    root : path
        An empty folder for every file of the cluster.
    accounting : bool
        Record jobs in slurmdbd backed by a private MariaDB (needed by ``sacct``); without it
        jobs are recorded by ``jobcomp/filetxt`` only (:attr:`jobcomp_file`).
    """

    def __init__(self, root, *, accounting: bool = True):
        self.root = Path(root)
        self.accounting = accounting
        self.cpus = os.cpu_count() or 1
        self.memory_mb = max(256, int(_memory_mb() * 0.8))
        self.conf = self.root / "etc" / "slurm.conf"
        self.jobcomp_file = self.root / "log" / "jobcomp.txt"
        self.env = {"SLURM_CONF": str(self.conf)}
        self._processes: dict[str, subprocess.Popen] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> "LocalSlurmCluster":
        for name in ("etc", "log", "munge", "state", "spool", "run"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / name, 0o700)
        deadline = time.monotonic() + timeout
        try:
            self._start_munge(deadline)
            if self.accounting:
                self._start_accounting(deadline)
            self._write_slurm_conf()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: self._client("scontrol", "ping").returncode == 0
                       and "UP" in self._client("scontrol", "ping").stdout, deadline,
                       "slurmctld did not answer", "slurmctld.log")
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
            self._wait(self._node_idle, deadline, "the node did not become idle", "slurmd.log")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every daemon started here (newest first), then the munge daemon."""
        for name in reversed(list(self._processes)):
            process = self._processes.pop(name)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # -- clients -------------------------------------------------------------------------------

    def _client(self, name, *args, timeout=30, env=None):
        return subprocess.run([_which(name) or name, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout,
                              env={**os.environ, **self.env, **(env or {})})

    def run(self, name, *args, timeout=60, env=None):
        """Run a SLURM client (``sbatch``, ``sacct``...) against this cluster, with ``env``
        added to the environment."""
        return self._client(name, *args, timeout=timeout, env=env)

    def queue_empty(self) -> bool:
        result = self._client("squeue", "--noheader", "--format=%i")
        return result.returncode == 0 and not result.stdout.strip()

    def wait_for_empty_queue(self, timeout: float) -> None:
        self._wait(self.queue_empty, time.monotonic() + timeout,
                   "jobs were still queued or running", "slurmctld.log", pause=1.0)

    def log(self, name: str) -> str:
        path = self.root / "log" / name
        return path.read_text(errors="replace") if path.is_file() else f"({name} is empty)"

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self, name, command, **kwargs):
        executable = _which(command[0]) or command[0]
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (kept by Popen)
        self._processes[name] = subprocess.Popen(
            [executable, *command[1:]], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, **self.env}, **kwargs)
        log.close()

    def _wait(self, condition, deadline, what, log_name, pause=0.3):
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise ClusterError(f"{name} exited with {process.returncode}:\n"
                                       + self.log(f"{name}.out")[-3000:]
                                       + self.log(f"{name}.log")[-3000:])
            try:
                if condition():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(pause)
        raise ClusterError(f"{what}:\n{self.log(log_name)[-4000:]}")

    def _node_idle(self) -> bool:
        result = self._client("sinfo", "--noheader", "--Node", "--format=%T")
        return result.returncode == 0 and result.stdout.strip().startswith("idle")

    def _start_munge(self, deadline):
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self._spawn("munged", [
            "munged", "--foreground", "--force", f"--key-file={key}",
            f"--socket={self.munge_socket}", f"--pid-file={self.root / 'run' / 'munged.pid'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            f"--log-file={self.root / 'log' / 'munged.log'}"])
        self._wait(self.munge_socket.exists, deadline, "munged did not start", "munged.log")

    def _start_accounting(self, deadline):
        data = self.root / "mysql"
        self.mysql_socket = self.root / "run" / "mysqld.sock"
        self.mysql_port = _free_port()
        install = subprocess.run(
            [_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120)
        if install.returncode != 0:
            raise ClusterError("mariadb-install-db failed:\n" + install.stdout[-2000:]
                               + install.stderr[-2000:])
        self._spawn("mariadbd", [
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.mysql_socket}",
            f"--port={self.mysql_port}", "--bind-address=127.0.0.1", "--user=root",
            f"--pid-file={self.root / 'run' / 'mariadbd.pid'}", "--skip-log-bin",
            "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
            "--innodb-lock-wait-timeout=900", f"--log-error={self.root / 'log' / 'mariadbd.log'}"])
        self._wait(lambda: _port_open(self.mysql_port), deadline, "MariaDB did not start",
                   "mariadbd.log")

        self.dbd_port = _free_port()
        dbd_conf = self.root / "etc" / "slurmdbd.conf"
        dbd_conf.write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost", "DbdAddr=127.0.0.1", f"DbdPort={self.dbd_port}",
            "SlurmUser=root", f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
            f"LogFile={self.root / 'log' / 'slurmdbd.log'}",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1",
            f"StoragePort={self.mysql_port}", "StorageUser=root", "StorageLoc=slurm_acct_db",
            ""]))
        os.chmod(dbd_conf, 0o600)
        # slurmdbd reads slurmdbd.conf next to the slurm.conf named by SLURM_CONF
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        self._wait(lambda: _port_open(self.dbd_port), deadline, "slurmdbd did not start",
                   "slurmdbd.log")

    def _write_slurm_conf(self):
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        lines = [
            f"ClusterName={CLUSTER_NAME}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            # quick scheduling of dependent jobs; keep finished jobs visible to squeue briefly
            "SchedulerParameters=sched_min_interval=100000",
            "MinJobAge=30",
            "KillWait=5",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_file}",
        ]
        if self.accounting:
            lines += ["AccountingStorageType=accounting_storage/slurmdbd",
                      "AccountingStorageHost=localhost",
                      f"AccountingStoragePort={self.dbd_port}",
                      # the munge socket of the connections to slurmdbd
                      f"AccountingStoragePass={self.munge_socket}"]
        lines += [
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))
        if self.accounting:
            registered = self._client("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
            if registered.returncode != 0 and "already exists" not in registered.stdout:
                raise ClusterError("sacctmgr could not register the cluster:\n"
                                   + registered.stdout + registered.stderr)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
