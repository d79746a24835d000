"""Parse untrusted files in a child process with a wall-clock limit, a memory limit and cancel.

A parser that hangs (a pickle whose dict key takes 2^60 hash steps) or allocates without bound
(a zip bomb) must not freeze or kill the app. So parsing runs in a forked child: the caller
waits on a socket, checking ``cancel()`` and the deadline every 50 ms, and kills the child when
either fires; Ctrl-C reaches the caller's wait, which kills the child on its way out. The child
runs under ``RLIMIT_DATA`` (its allocations fail beyond the limit) and hands back only JSON and
raw tensor bytes, never a pickle.

Starting a fresh Python that imports torch costs 1-10 s, so one small server process (the
*zygote*) imports torch once, on first use or at ``prestart()``, then forks one child per job
(tens of milliseconds). Forking the caller itself is not an option: the window has threads.
On platforms without ``fork`` (Windows) parsing runs in-process, without the limits.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from core.errors import BnpError, Cancelled

DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MEMORY_BYTES = 4 * 2**30
TIMEOUT_ENV = "BNP_PARSE_TIMEOUT"  # seconds
MEMORY_ENV = "BNP_PARSE_MEMORY_MB"  # MiB
# Modules the zygote imports once, so that forked children start with them loaded.
PRELOAD = ("torch", "core.io.checkpoint", "core.io.parse")
POLL_S = 0.05
STARTUP_TIMEOUT_S = 300.0  # importing torch on a loaded machine
# dtypes that may cross from the child; anything else is refused by the child's caller
DTYPES = (
    "float64 float32 float16 bfloat16 int64 int32 int16 int8 uint8 bool complex64 complex128"
).split()

Cancel = Callable[[], bool]


@dataclass
class Parsed:
    """What a child hands back: JSON-ready information and plain CPU tensors."""

    info: Any
    tensors: list  # list[torch.Tensor]


def available() -> bool:
    """True where parsing can run in a child process (POSIX with fork and fd passing)."""
    return hasattr(os, "fork") and hasattr(socket, "send_fds")


def default_timeout() -> float:
    """Seconds a parse may take: $BNP_PARSE_TIMEOUT, else DEFAULT_TIMEOUT_S."""
    return _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, 1.0)


def default_memory_limit() -> int:
    """Bytes a parse may allocate: $BNP_PARSE_MEMORY_MB (MiB), else DEFAULT_MEMORY_BYTES."""
    return int(_env_number(MEMORY_ENV, DEFAULT_MEMORY_BYTES / 2**20, 2**20) * 2**20)


def _env_number(name: str, default: float, scale: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BnpError(f"${name} must be a number, got {text!r}.") from None
    if not value > 0 or value == float("inf"):
        raise BnpError(f"${name} must be a positive number, got {text!r}.")
    return value


def prestart() -> None:
    """Start the zygote in the background (importing torch there) so the first parse is fast."""
    if available():
        _ZYGOTE.start()


def run_isolated(
    func: str,
    *args: Any,
    what: str,
    error: type[BnpError] = BnpError,
    timeout: float | None = None,
    memory_limit: int | None = None,
    cancel: Cancel | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Parsed:
    """Call ``module:function(*args)`` in a child; it returns (info, list of tensors).

    What the function reports with ``report_progress(done, total)`` reaches ``progress``.

    The function raises BnpError subclasses for the user; those come back with their class and
    message. Running past ``timeout`` seconds, allocating past ``memory_limit`` bytes or
    crashing raise ``error`` with a one-line message naming ``what`` ("reading model.pth");
    ``cancel()`` returning True raises ``Cancelled``. The zygote's start-up is not counted.
    """
    timeout = default_timeout() if timeout is None else float(timeout)
    memory_limit = default_memory_limit() if memory_limit is None else int(memory_limit)
    if not available():
        info, tensors = _resolve(func)(*args)
        return Parsed(info, list(tensors))
    conn = _ZYGOTE.fork_child(cancel)
    pid = None
    finished = False
    try:
        conn.send_bytes(pickle.dumps((func, args, memory_limit, 2 * timeout + 10)))
        deadline = time.monotonic() + timeout
        waiting = dict(conn=conn, deadline=deadline, cancel=cancel, what=what, error=error)
        waiting["timeout"] = timeout
        pid = json.loads(_receive(**waiting))["pid"]
        header = json.loads(_receive(**waiting))
        while "progress" in header:  # the child's progress reports come before its answer
            if progress is not None:
                done, total = header["progress"]
                progress(int(done), int(total))
            header = json.loads(_receive(**waiting))
        if not header.get("ok"):
            raise _child_error(header, what, error, memory_limit)
        tensors = _receive_tensors(header["tensors"], memory_limit, what, error, waiting)
        finished = True
        return Parsed(header.get("info"), tensors)
    except EOFError:
        raise error(
            f"{what} failed: the reader process ended without an answer (it crashed, or the "
            f"operating system stopped it for using more than {_gib(memory_limit)} of memory)."
        ) from None
    finally:
        if pid is None and not finished:
            pid = _late_pid(conn)  # stopped before the child said who it is
        conn.close()
        if pid is not None and not finished:
            _kill(pid)


def read_isolated(
    func: str,
    path: Path,
    trust_pickle: bool,
    verb: str,
    *,
    error: type[BnpError] = BnpError,
    timeout: float | None = None,
    memory_limit: int | None = None,
    cancel: Cancel | None = None,
) -> Parsed:
    """``run_isolated`` for a file reader ``func(absolute path, trust_pickle, memory limit)``;
    a failure names "<verb> <file name>"."""
    return run_isolated(
        func,
        str(path.absolute()),  # the child's working folder may differ from ours
        bool(trust_pickle),
        memory_limit or default_memory_limit(),
        what=f"{verb} {path.name}",
        error=error,
        timeout=timeout,
        memory_limit=memory_limit,
        cancel=cancel,
    )


def _receive(conn: Connection, deadline: float, cancel, what, error, timeout) -> bytes:
    """The child's next message. The limit is checked at every message too, not only while
    none comes: a reader that keeps reporting progress would otherwise never be stopped."""
    while True:
        if time.monotonic() > deadline:
            raise error(
                f"{what} took longer than {timeout:g} s and was stopped: the file makes the "
                f"reader work without end (a malformed or malicious file?). If it is a genuine "
                f"huge model on a slow disk, set ${TIMEOUT_ENV} to more seconds."
            )
        if conn.poll(POLL_S):
            return conn.recv_bytes()
        if cancel is not None and cancel():
            raise Cancelled(f"{what}: cancelled")


def _receive_tensors(specs, memory_limit: int, what: str, error, waiting: dict) -> list:
    import torch

    total = 0
    checked = []
    for spec in specs:
        dtype_name, shape, nbytes = spec
        if dtype_name not in DTYPES:
            raise error(f"{what} failed: tensors of type {dtype_name} are not supported.")
        dtype = getattr(torch, dtype_name)
        numel = 1
        for side in shape:
            numel *= int(side)
        if numel * dtype.itemsize != nbytes or any(int(side) < 0 for side in shape):
            raise error(f"{what} failed: the reader process sent an inconsistent tensor.")
        total += nbytes
        checked.append((dtype, tuple(int(s) for s in shape), nbytes))
    if total > memory_limit:
        raise error(f"{what} failed: its tensors need more than {_gib(memory_limit)} of memory.")
    tensors = []
    for dtype, shape, nbytes in checked:
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        while not waiting["conn"].poll(POLL_S):
            _receive_check(waiting)
        received = waiting["conn"].recv_bytes_into(buffer.numpy()) if nbytes else 0
        if nbytes == 0:
            waiting["conn"].recv_bytes()
        elif received != nbytes:
            raise error(f"{what} failed: the reader process sent a truncated tensor.")
        tensors.append(buffer.view(dtype).reshape(shape))
    return tensors


def _receive_check(waiting: dict) -> None:
    cancel = waiting["cancel"]
    if cancel is not None and cancel():
        raise Cancelled(f"{waiting['what']}: cancelled")
    if time.monotonic() > waiting["deadline"]:
        raise waiting["error"](
            f"{waiting['what']} took longer than {waiting['timeout']:g} s and was stopped."
        )


def _child_error(header: dict, what: str, error, memory_limit: int) -> BnpError:
    from core import errors

    kind, message = header.get("error"), str(header.get("message", "")).strip()
    if kind == "memory":
        return error(
            f"{what} was stopped: reading it needs more than {_gib(memory_limit)} of memory "
            f"(sizes declared in the file far beyond its own size?). If it is a genuine huge "
            f"model, set ${MEMORY_ENV} to more MiB."
        )
    cls = getattr(errors, str(kind), None)
    if isinstance(cls, type) and issubclass(cls, BnpError):
        return cls(message)
    return error(f"{what} failed: {message}")


def _late_pid(conn: Connection) -> int | None:
    try:
        if conn.poll(1.0):
            return int(json.loads(conn.recv_bytes())["pid"])
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        pass
    return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def _resolve(func: str) -> Callable:
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- the zygote ---------------------------------------------------------------------------


class _Zygote:
    """A server process that imported torch once and forks a child per job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._ready = False

    def start(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        ours, theirs = socket.socketpair()
        code = "import sys; from core.safety.isolation import _zygote_main; _zygote_main()"
        env = dict(os.environ)
        env["BNP_ZYGOTE_FD"] = str(theirs.fileno())
        env["BNP_ZYGOTE_PATH"] = json.dumps(sys.path)
        env["BNP_ZYGOTE_PRELOAD"] = ",".join(PRELOAD)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._sock = ours
        self._ready = False

    def fork_child(self, cancel: Cancel | None) -> Connection:
        """A connection to a freshly forked child, the zygote started (and awaited) if needed."""
        with self._lock:
            self._start_locked()
            if not self._ready:
                self._await_ready(cancel)
            ours, theirs = socket.socketpair()
            try:
                socket.send_fds(self._sock, [b"J"], [theirs.fileno()])
            except OSError:
                self._proc = None  # the zygote died: start a new one next time
                ours.close()
                raise BnpError("The reader process stopped unexpectedly; try again.") from None
            finally:
                theirs.close()
        return Connection(ours.detach())

    def _await_ready(self, cancel: Cancel | None) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        self._sock.settimeout(POLL_S)
        try:
            while True:
                try:
                    reply = self._sock.recv(4096)
                    break
                except TimeoutError:
                    if cancel is not None and cancel():
                        raise Cancelled("cancelled while the reader process started") from None
                    if time.monotonic() > deadline:
                        raise BnpError("The reader process did not start in time.") from None
        finally:
            self._sock.settimeout(None)
        if reply != b"R":
            self._proc = None
            detail = reply[1:].decode("utf-8", "replace") if reply else "it exited"
            raise BnpError(f"The reader process could not start: {detail}")
        self._ready = True

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._sock is not None:
            self._sock.close()


_ZYGOTE = _Zygote()
atexit.register(_ZYGOTE.stop)


def _zygote_main() -> None:
    """The zygote's loop: import PRELOAD, then fork a child for every connection received."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    sys.path[:] = json.loads(os.environ.pop("BNP_ZYGOTE_PATH"))
    sock = socket.socket(fileno=int(os.environ.pop("BNP_ZYGOTE_FD")))
    try:
        for name in filter(None, os.environ.pop("BNP_ZYGOTE_PRELOAD", "").split(",")):
            module = importlib.import_module(name)
            # a module may exercise its code once here, so that lazy imports and first-call
            # set-up happen in the zygote rather than again in every child
            try:
                getattr(module, "zygote_warm_up", lambda: None)()
            except Exception:
                pass  # only a speed-up
    except BaseException as e:  # report why instead of dying silently
        sock.sendall(b"E" + f"importing failed: {type(e).__name__}: {e}".encode()[:4000])
        return
    sock.sendall(b"R")
    _serve(sock)
    os._exit(0)  # at once: a normal shutdown with torch loaded can linger, keeping children


def _serve(sock: socket.socket) -> None:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 16, 1)
        except OSError:
            return
        if not message:
            return  # the caller closed its end or exited
        for fd in fds[1:]:
            os.close(fd)
        if not fds:
            continue
        zygote = os.getpid()
        pid = os.fork()
        if pid == 0:
            sock.close()
            code = 0
            try:
                _child_main(fds[0], zygote)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(fds[0])


def _child_main(fd: int, zygote: int) -> None:
    """One job: read the call, answer with our pid, run it under the limits, answer."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _die_with_parent()
    if os.getppid() != zygote:
        return  # the zygote (and so the app) went away before we could ask to die with it
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)  # a trusted pickle's prints and torch's warnings stay out of the way
    conn = Connection(fd)
    func, args, memory_limit, cpu_seconds = pickle.loads(conn.recv_bytes())  # from our caller
    conn.send_bytes(json.dumps({"pid": os.getpid()}).encode())
    _limit_memory(memory_limit)
    _limit_cpu(cpu_seconds)
    _PROGRESS.update(conn=conn, last=time.monotonic(), sent=False)
    try:
        info, tensors = _resolve(func)(*args)
        specs, payloads = _tensor_payloads(tensors)
        header = json.dumps({"ok": True, "info": info, "tensors": specs}).encode()
    except MemoryError:
        header = json.dumps({"ok": False, "error": "memory"}).encode()
        payloads = []
    except BnpError as e:
        header = _error_header(type(e).__name__, str(e))
        payloads = []
    except RecursionError:
        header = _error_header("", "it is nested too deeply to be read")
        payloads = []
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "can't allocate memory" in text or "bad_alloc" in text or "out of memory" in text:
            header = json.dumps({"ok": False, "error": "memory"}).encode()
        else:
            header = _error_header("", f"{type(e).__name__}: {text or 'no details'}")
        payloads = []
    conn.send_bytes(header)
    for payload in payloads:
        conn.send_bytes(payload)
    conn.close()


_PROGRESS: dict = {"conn": None, "last": 0.0, "sent": False}
PROGRESS_INTERVAL_S = 0.25


def report_progress(done: int, total: int) -> None:
    """From a function run in a child: how far it is, sent once the work has taken 0.25 s and
    then at most every 0.25 s, and at the end (a quick read reports nothing); nothing happens
    outside a child."""
    conn = _PROGRESS["conn"]
    if conn is None:
        return
    now = time.monotonic()
    if done < total and now - _PROGRESS["last"] < PROGRESS_INTERVAL_S:
        return
    if done >= total and not _PROGRESS["sent"]:
        return
    _PROGRESS.update(last=now, sent=True)
    conn.send_bytes(json.dumps({"progress": [int(done), int(total)]}).encode())


def _error_header(kind: str, message: str) -> bytes:
    return json.dumps({"ok": False, "error": kind, "message": message[:2000]}).encode()


def _tensor_payloads(tensors: Sequence) -> tuple[list, list]:
    import torch

    specs, payloads = [], []
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.is_quantized:
            raise BnpError(f"it holds a {type(t).__name__} that is not a plain dense tensor")
        name = str(t.dtype).removeprefix("torch.")
        if name not in DTYPES:
            raise BnpError(f"it holds tensors of type {name}, which is not supported")
        flat = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        specs.append([name, list(t.shape), flat.numel()])
        payloads.append(flat.numpy())
    return specs, payloads


def _limit_memory(limit: int) -> None:
    """Cap the child's data segment at its current size plus ``limit`` bytes."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    used = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    used = int(line.split()[1]) * 1024
    except OSError:
        pass
    which = getattr(resource, "RLIMIT_DATA", None) or resource.RLIMIT_AS
    try:
        _, hard = resource.getrlimit(which)
        soft = used + limit
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))
    except (ValueError, OSError):
        pass


def _limit_cpu(seconds: float) -> None:
    """A backstop should the caller vanish without killing us: CPU time beyond it kills."""
    try:
        import resource

        limit = int(seconds) + 1
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(
            resource.RLIMIT_CPU, (limit, limit if hard == resource.RLIM_INFINITY else hard)
        )
    except (ImportError, ValueError, OSError):
        pass


def _die_with_parent() -> None:
    """Linux: the kernel kills this child when the zygote exits (it exits with the app)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
