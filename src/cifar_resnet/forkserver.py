"""Jobs forked from a process that has imported torch and the exporter already.

Snakemake starts every job as a Python process of its own, and importing torch takes 1.2 s of it (an
export job's exporter and onnxruntime about 2.7 s more), a fifth of a demo training job. When the
workflow runs on this machine, its ``onstart`` starts one server that imports them once; each job's
script hands its ``snakemake`` object, standard streams, directory, environment and script path over
to the server, which forks a process that runs the script, as multiprocessing's forkserver does. The
script Snakemake started waits for that process, passes Ctrl-C and SIGTERM on to it, takes it along
when killed, and exits as it exited. Without a server (cluster jobs, a job in another Python
environment, a server not ready yet) a job runs in its own process as before.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import pickle
import runpy
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

ADDRESS_VARIABLE = "CIFAR_RESNET_FORK_SERVER"
# What the training, evaluation, export and latency jobs import, and what the exporter and the
# quantiser import at their first call (torch._dynamo, torch.export, onnxscript's operator library and
# optimizer: 1.25 s of every export job); 2.9 s in all on a 2-core Xeon. Importing computes nothing
# and touches no CUDA, so each forked job starts its own OpenMP, onnxruntime and CUDA state, as a new
# process would.
PRELOADED = (
    "cifar_resnet.run",
    "cifar_resnet.devices",
    "cifar_resnet.evaluate",
    "cifar_resnet.export",
    "cifar_resnet.quantize",
    "cifar_resnet.latency",
    "torch._dynamo",
    "torch.export",
    "torch.onnx._internal.exporter._core",
    "onnxscript.function_libs.torch_lib.ops",
    "onnxscript.optimizer",
    "onnxscript.rewriter",
    "onnxruntime",
    "onnxruntime.quantization",
    "onnxruntime.quantization.shape_inference",
)
STATUS = struct.Struct("!q")  # the forked process's pid, then its exit status (-N: killed by signal N)
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Not `python -m`: the forked jobs must find the server's state in this module, not in __main__.
SERVER_PROGRAM = "import sys; from cifar_resnet.forkserver import serve; serve(sys.argv[1], int(sys.argv[2]))"

# In a forked job: the pid of the process Snakemake started for it, whose start is the job's start.
job_process: int | None = None
server: subprocess.Popen | None = None


def _send_status(connection: socket.socket, value: int) -> None:
    with contextlib.suppress(OSError):  # a job's own process that is gone waits for nothing
        connection.sendall(STATUS.pack(value))


def _receive_exactly(connection: socket.socket, size: int) -> bytes | None:
    """``size`` bytes from ``connection``, or None when the other side closes it first."""
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _receive_status(connection: socket.socket) -> int | None:
    data = _receive_exactly(connection, STATUS.size)
    return None if data is None else STATUS.unpack(data)[0]


def _exit_status(wait_status: int) -> int:
    return -os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else os.WEXITSTATUS(wait_status)


# The job's side.


def hand_over(snakemake) -> None:
    """Run this job's script in a process forked by the workflow's server and exit as that process
    exits; return (having done nothing) where there is no server to take it."""
    address = os.environ.get(ADDRESS_VARIABLE)
    if job_process is not None or not address:
        return
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
    except OSError:  # not started yet, or stopped: this process runs the job itself
        connection.close()
        return
    request = {
        "python": sys.executable,
        "script": sys.modules["__main__"].__file__,
        "argv": sys.argv,
        "path": sys.path,
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "pid": os.getpid(),
        "snakemake": pickle.dumps(snakemake),
    }
    payload = pickle.dumps(request)
    # Signals that come before the forked process is known are passed on once it is.
    forked, pending = 0, []
    handlers = {signum: signal.getsignal(signum) for signum in FORWARDED_SIGNALS}

    def forward(signum, frame):
        if forked:
            os.kill(forked, signum)
        else:
            pending.append(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    socket.send_fds(connection, [struct.pack("!Q", len(payload))], [0, 1, 2])
    connection.sendall(payload)
    forked = _receive_status(connection)
    if not forked:  # declined, or the server is gone: this process runs the job itself
        connection.close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in pending:
            signal.raise_signal(signum)
        return
    for signum in pending:
        os.kill(forked, signum)
    status = _receive_status(connection)
    if status is None:
        sys.exit(f"the fork server ended while process {forked} ran this job")
    if status < 0:  # killed by a signal: end the same way, for Snakemake to report it
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    sys.exit(status)


# The server's side.


def _die_with(connection: socket.socket) -> None:
    """Kill this forked job as soon as the process Snakemake started for it is gone (its end of the
    connection closes), as that process's own job would have died with it."""
    while connection.recv(1):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _run_forked(connection: socket.socket, streams: list[int], request: dict) -> None:
    """In the forked process: become the job's process and run its script; never returns."""
    global job_process
    status = 1
    try:
        for target, stream in enumerate(streams):
            os.dup2(stream, target)
            os.close(stream)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environment"])
        sys.argv, sys.path[:] = request["argv"], request["path"]
        job_process = request["pid"]
        threading.Thread(target=_die_with, args=(connection,), daemon=True).start()
        snakemake = pickle.loads(request["snakemake"])
        runpy.run_path(request["script"], init_globals={"snakemake": snakemake}, run_name="__main__")
        status = 0
    except SystemExit as exit:
        code = exit.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        status = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


class Server:
    """Accepts jobs on a Unix socket and forks one process per job; single-threaded, so that a fork
    copies no lock another thread holds."""

    def __init__(self, address: str, workflow: int):
        self.address = address
        self.workflow = workflow  # the Snakemake process that started the server
        self.running: dict[int, socket.socket] = {}
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes the selector through the pipe
        signal.signal(signal.SIGTERM, self.stop)
        # The workflow's Ctrl-C reaches each forked job through the process Snakemake started for it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def stop(self, signum=None, frame=None) -> None:
        self.stopping = True

    def serve(self) -> None:
        self.listener.bind(self.address)  # bound only now, ready: a job that came earlier ran itself
        self.listener.listen(64)
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self.wakeup_read, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.listener:
                    self.accept()
                else:
                    os.read(self.wakeup_read, 4096)
            self.reap()
            if os.getppid() != self.workflow:  # Snakemake ended without stopping the server
                self.stopping = True
            if self.stopping and self.listener.fileno() >= 0:
                selector.unregister(self.listener)
                self.listener.close()
            if self.stopping and not self.running:
                break
        with contextlib.suppress(OSError):  # a server whose workflow ended leaves nothing behind
            os.unlink(self.address)
            os.rmdir(Path(self.address).parent)

    def accept(self) -> None:
        connection, _ = self.listener.accept()
        streams: list[int] = []
        try:
            connection.settimeout(10)
            header, streams, _, _ = socket.recv_fds(connection, 8, 3)
            (size,) = struct.unpack("!Q", header)
            payload = _receive_exactly(connection, size)
            request = None if payload is None else pickle.loads(payload)
            connection.settimeout(None)
        except (OSError, ValueError, pickle.UnpicklingError, struct.error):
            request = None
        if request is None or request["python"] != sys.executable or len(streams) != 3:
            self.decline(connection, streams)  # a broken request, or another environment
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:  # out of memory or processes: the server serves on
            self.decline(connection, streams)
            return
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for other in [self.listener, *self.running.values()]:
                other.close()
            os.close(self.wakeup_read)
            _run_forked(connection, streams, request)
        for stream in streams:
            os.close(stream)
        self.running[pid] = connection
        _send_status(connection, pid)

    @staticmethod
    def decline(connection: socket.socket, streams: list[int]) -> None:
        """Tell the job's process to run the job itself."""
        _send_status(connection, 0)
        connection.close()
        for stream in streams:
            os.close(stream)

    def reap(self) -> None:
        while self.running:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            connection = self.running.pop(pid, None)
            if connection is not None:
                _send_status(connection, _exit_status(wait_status))
                connection.close()


def serve(address: str, workflow: int) -> None:
    for name in PRELOADED:
        importlib.import_module(name)
    # What the imports made stays out of every collection, in the server and in each forked job.
    gc.freeze()
    Server(address, workflow).serve()


# The workflow's side: Snakemake's onstart and onsuccess/onerror.


def start(log: Path) -> None:
    """Start the server for the jobs this workflow runs on this machine, writing its errors to
    ``log``; jobs find it through $CIFAR_RESNET_FORK_SERVER."""
    global server
    directory = tempfile.mkdtemp(prefix="cifar-resnet-")  # private (0700), and short: socket paths are
    address = str(Path(directory) / "jobs")  # limited to 107 bytes
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as errors:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_PROGRAM, address, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
            start_new_session=True,  # the terminal's Ctrl-C goes to the jobs, not to the server
        )
    os.environ[ADDRESS_VARIABLE] = address


def stop() -> None:
    """Stop the server once its jobs have ended, and remove its socket."""
    global server
    address = os.environ.pop(ADDRESS_VARIABLE, None)
    if server is None:
        return
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    server = None
    if address:
        shutil.rmtree(Path(address).parent, ignore_errors=True)
