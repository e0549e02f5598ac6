"""Runs that span several processes (hosts): JAX's multi-controller runtime.

A TPU pod slice has several hosts and a GPU cluster several nodes; JAX runs one process per
host, every process the same program, over one global device mesh (``jax.distributed``). This
module owns what that needs beyond ``wsjax.parallel``'s mesh:

- ``initialize``: starts the runtime from flags (coordinator address, process count and id) or
  from the environment a cluster provides (a TPU slice, SLURM, Open MPI, or
  ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``); a single process needs
  nothing and nothing is started. It returns the ``Layout`` (processes, devices).
- ``host_value``: the numpy value of arrays that may span other processes' devices (every
  process gets it; each must call it at the same point of the program, like any collective).
- ``is_main``: the one process (0) that writes results, figures and metric logs; the others
  write only their checkpoint shards and their own log (``ProcessLog``).
- ``barrier``: every process waits for the others here.
- ``launch_local``: a run's processes started on this machine (fake CPU devices, 127.0.0.1),
  to try a multi-host run, test it, or time it (``wsjax bench_hosts``).

A process that dies stops the others: each sends heartbeats to the coordinator (process 0's
host), and when one misses ``heartbeat_timeout`` seconds of them the runtime ends every
other process with "Terminating process because the JAX distributed service detected fatal
errors"; when process 0 dies, the others end at once. Starting every process again with the
same command resumes the run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import jax
from jax.experimental import multihost_utils

# Environment variables that say the job launched several processes, by cluster kind; JAX's
# own detection (jax._src.clusters) then reads the coordinator, count and id from them.
CLUSTER_VARIABLES = {
    "slurm": "SLURM_NTASKS",
    "ompi": "OMPI_MCA_orte_hnp_uri",
    "tpu": "TPU_WORKER_HOSTNAMES",
    "env": "JAX_COORDINATOR_ADDRESS",
}
HEARTBEAT_TIMEOUT = 60  # seconds without heartbeats before a process counts as dead


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process sits: its index of ``process_count``, its local devices of the
    global ``device_count``, their platform, and the coordinator (None for one process)."""

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int
    platform: str
    coordinator: str | None = None

    def describe(self) -> str:
        """One line for a log: ``process 0 of 2: 2 of 4 cpu devices, coordinator ...``."""
        text = (f"process {self.process_index} of {self.process_count}: "
                f"{self.local_device_count} of {self.device_count} {self.platform} devices")
        return text + (f", coordinator {self.coordinator}" if self.coordinator else "")


def layout() -> Layout:
    """The current ``Layout`` (starts JAX's backend if nothing has yet)."""
    state = _distributed_state()
    return Layout(jax.process_index(), jax.process_count(), jax.local_device_count(),
                  jax.device_count(), jax.devices()[0].platform,
                  getattr(state, "coordinator_address", None) if jax.process_count() > 1
                  else None)


def _distributed_state():
    from jax._src import distributed  # the runtime's own record of initialize()'s arguments

    return distributed.global_state


def is_distributed() -> bool:
    """Whether JAX's multi-controller runtime runs here (``initialize``, or the caller,
    started it)."""
    return getattr(_distributed_state(), "client", None) is not None


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """The kind of job (a ``CLUSTER_VARIABLES`` key) whose environment says it launched
    several processes, or None: a single process, or a launcher JAX cannot read."""
    environ = os.environ if environ is None else environ
    for kind, variable in CLUSTER_VARIABLES.items():
        value = environ.get(variable)
        if not value:
            continue
        if kind == "slurm" and int(value) < 2:
            continue  # one task: nothing to coordinate
        if kind == "tpu" and len(value.split(",")) < 2:
            continue  # a single-host TPU VM
        return kind
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout: int = HEARTBEAT_TIMEOUT,
               init_timeout: int = 300, environ: Mapping[str, str] | None = None) -> Layout:
    """Starts JAX's multi-controller runtime when this is one process of several, and returns
    the ``Layout``. Call it first, before anything runs on a device.

    Flags win: ``coordinator`` (``host:port`` of process 0, reachable from every host),
    ``num_processes`` and ``process_id``; ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` stand
    in for the last two. Without flags the environment decides (``detect_cluster``: a TPU
    slice on GKE, SLURM, Open MPI, ``JAX_COORDINATOR_ADDRESS``); with neither, nothing is
    started. ``coordinator='auto'`` leaves all three to JAX's own detection (e.g. a Cloud TPU
    VM slice, found from the VM's metadata; there JAX runs without this call too, but without
    the heartbeats that stop the others when a host dies).
    ``heartbeat_timeout``: seconds after which a silent process counts as dead and the others
    stop; ``init_timeout``: how long to wait for every process to connect. A second call with
    the same arguments returns the layout; other arguments raise ``RuntimeError``.
    """
    environ = os.environ if environ is None else environ
    auto = coordinator == "auto"
    coordinator = None if auto else coordinator or environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _int_env(
        environ, "JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _int_env(environ, "JAX_PROCESS_ID")
    given = {"coordinator": coordinator, "num_processes": num_processes,
             "process_id": process_id}
    # A launcher whose environment JAX reads itself (the variables above are the flags').
    cluster = detect_cluster(environ)
    cluster = "auto" if auto else None if cluster == "env" else cluster
    if all(v is None for v in given.values()) and cluster is None:
        return layout()  # one process (or one already started by the caller)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num-processes {num_processes}: must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < \
            num_processes:
        raise ValueError(f"--process-id {process_id}: must be in [0, {num_processes}) "
                         f"(process ids count from 0 up to --num-processes - 1)")
    if num_processes == 1 and cluster is None:
        return layout()  # one process of one: nothing to coordinate
    if cluster is None and None in given.values():
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        raise ValueError(f"a run over several processes needs --coordinator, --num-processes "
                         f"and --process-id on every process; missing {', '.join(missing)} "
                         f"(or launch under SLURM, Open MPI or on a TPU slice, whose "
                         f"environment JAX reads)")
    if is_distributed():
        state = _distributed_state()
        same = ((coordinator is None or coordinator == state.coordinator_address)
                and (num_processes is None or num_processes == jax.process_count())
                and (process_id is None or process_id == jax.process_index()))
        if not same:
            raise RuntimeError(f"JAX's distributed runtime is already running as "
                               f"{layout().describe()}; a process joins one run only")
        return layout()
    _cpu_collectives()
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=init_timeout,
                                   heartbeat_timeout_seconds=heartbeat_timeout)
    except RuntimeError as e:
        if "before any JAX" in str(e) or "already initialized" in str(e).lower():
            raise RuntimeError(
                "jax.distributed must start before anything runs on a device: call "
                "wsjax.hosts.initialize() (or pass the flags) first in the program") from None
        raise
    return layout()


def _int_env(environ, name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} must be an integer") from None


def _cpu_collectives() -> None:
    """Cross-process reductions on CPU devices go through Gloo (over TCP); the default CPU
    client has none. The option is ignored by GPU and TPU devices."""
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a jax whose CPU client needs no option
        pass


def process_index() -> int:
    """This process's index (0 for a single process). Starts no backend: before any device
    is used and without ``initialize``, this is the only process."""
    from jax._src import xla_bridge

    if not is_distributed() and not xla_bridge.backends_are_initialized():
        return 0
    return jax.process_index()


def is_main() -> bool:
    """True in the process that writes a run's shared files: process 0, or the only one."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _spans_processes(leaf) -> bool:
    return (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
            and not leaf.is_fully_replicated)


def host_value(tree):
    """``tree`` as numpy arrays, whole on every process: an array split over other
    processes' devices is gathered (a collective: every process calls this at the same
    point); anything else is read locally."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [multihost_utils.process_allgather(leaf, tiled=True)
              if _spans_processes(leaf) else leaf for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, jax.device_get(leaves))


class ProcessLog:
    """While open, everything this process prints also goes to ``path`` (appended; one file
    per process). With ``console=False`` (the processes other than 0, whose output would
    repeat process 0's) it goes to the file only."""

    def __init__(self, path: str | os.PathLike, *, console: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        self._console = console
        self._stdout = sys.stdout
        sys.stdout = self

    def write(self, text: str) -> int:
        """Writes ``text`` to the file (and the console)."""
        self._file.write(text)
        if self._console:
            self._stdout.write(text)
        return len(text)

    def flush(self) -> None:
        """Flushes the file and the console."""
        self._file.flush()
        self._stdout.flush()

    def isatty(self) -> bool:
        """Whether the console is a terminal (progress bars ask)."""
        return self._console and self._stdout.isatty()

    def close(self) -> None:
        """Puts the console back and closes the file (once)."""
        if sys.stdout is self:
            sys.stdout = self._stdout
        if not self._file.closed:
            self._file.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (for a local coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, env: Mapping[str, str] | None = None) -> dict:
    """This process's environment plus ``env``, for a JAX process on the CPU with ``devices``
    fake devices; the caller's other XLA flags are kept."""
    full = {**os.environ, **(env or {}), "JAX_PLATFORMS": "cpu"}
    kept = [f for f in full.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    full["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
    return full


def launch_local(command, *, processes: int, devices: int, logs: str | os.PathLike,
                 env: Mapping[str, str] | None = None) -> list[subprocess.Popen]:
    """Starts ``python -m wsjax <command>`` as the ``processes`` processes of one run on this
    machine, each with ``devices`` fake CPU devices, coordinated over a free port of
    127.0.0.1 (one process: no coordination flags). Process k's output (stdout and stderr)
    goes to ``<logs>.<k>.txt``. The caller waits for the processes (and kills any left)."""
    coordination = []
    if processes > 1:
        coordination = ["--coordinator", f"127.0.0.1:{free_port()}",
                        "--num-processes", str(processes)]
    full_env = cpu_env(devices, env)
    procs = []
    for k in range(processes):
        ids = ["--process-id", str(k)] if processes > 1 else []
        with open(f"{logs}.{k}.txt", "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "wsjax", *command, *coordination, *ids],
                stdout=out, stderr=subprocess.STDOUT, env=full_env))
    return procs


def wait_local(procs, timeout: float) -> list[int]:
    """Waits for the processes of ``launch_local`` (``timeout`` seconds each) and returns
    their exit codes; any still running on the way out (a timeout, an error) is killed."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
