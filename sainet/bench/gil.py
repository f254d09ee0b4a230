"""How much of the time the bench's (the trainer's) process holds its GIL, sampled by py-spy.

A loader whose per-image work runs on threads of the trainer's process can use more cores only for
the work done with the GIL released (decode, OpenCV, numpy's large kernels); the Python between
them — planning, collating, handing work to the pool — holds the GIL and runs one thread at a time.
That share of the loader's CPU time is its serial part (Amdahl: no number of cores gives more than
1 / share). CPython keeps no account of it, so it is sampled from outside: ``py-spy record --gil
--nonblocking`` reads the interpreter's state 100 times a second without stopping the process and
keeps the samples in which some thread holds the GIL. Samples taken / (rate x seconds sampled) is
the share of wall time the GIL was held; the bench turns it into seconds and divides by the loader's
CPU seconds (`sampling.measure`).

Measured on the 2-core dev box (a thread that spins in Python for a known share of the time beside
an OpenCV thread): 0.089 / 0.24 / 0.40 of wall time by the thread's own CPU clock against 0.095 /
0.20 / 0.40 sampled. The memory sampler's thread (`sampling._Sampler`), which the bench does not
count as the loader's, is left out of the samples. py-spy is a separate process: the bench leaves
its CPU time and memory out of the backend's (`pids`); it used 0.05 s of CPU in 4.5 s beside four
busy threads (~1 % of a core).

The share is of wall time: a thread the OS has taken off its core while it holds the GIL still
holds it. On a machine with more runnable threads than cores (other work beside the bench) the
share reads higher than the loader's own need; the process loaders' rows, whose parent's GIL share
can then exceed its CPU share, show how much.

py-spy comes with ``pip install 'sainet[bench]'`` (and `make venv`). It reads the memory of its
parent, which Yama's ptrace_scope 1 (Ubuntu's default) forbids unless the parent names it: the
sampler does so (prctl PR_SET_PTRACER) before py-spy starts, and withdraws it after. Without py-spy,
or where the system forbids the read anyway (ptrace_scope 2-3, a container's seccomp rules),
`held_seconds` is None and `reason` says why; the bench then reports no GIL share instead of a guess.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["GilSampler", "find_py_spy", "held_samples"]

log = logging.getLogger(__name__)

#: frames of the bench's own work (its memory sampler's thread, this reader, its CPU counts), whose
#: GIL time is not the loader's
OWN_FRAMES = ("_Sampler._run", "GilSampler._read", "tree_cpu_seconds", "cpu_seconds")
#: why py-spy could not read this process, once it could not: later samplers do not try again
_refused: list[str] = []
_STARTED = "Sampling process"


def find_py_spy() -> str | None:
    """The py-spy executable beside this interpreter (a venv's bin) or on PATH; None without one."""
    here = Path(sys.executable).parent / "py-spy"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("py-spy")


#: prctl(2) option of the Yama LSM: which process may trace (and read the memory of) this one
_PR_SET_PTRACER = 0x59616D61


def _allow_tracer(pid: int) -> None:
    """Let `pid` read this process's memory where Yama's ptrace_scope 1 (Ubuntu's default) allows only
    ancestors to (0: withdraw it). Without Yama the call fails and nothing is needed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def held_samples(raw: str, exclude: tuple[str, ...] = OWN_FRAMES) -> int:
    """Samples in py-spy's ``--format raw`` output (one ``frame;frame;... count`` line per distinct
    stack) whose stack holds none of the `exclude` frames."""
    n = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        if not any(f"{frame} (" in stack for frame in exclude):
            n += int(count)
    return n


class GilSampler:
    """Samples whether process `pid` (this one by default) holds its GIL while the block runs.

    After the block: `held_seconds` (the GIL held, in seconds of the sampled window, the bench's own
    helper threads left out), `seconds` (the window) and `share` (their ratio), or None with
    `reason` when py-spy is missing or could not read the process. `pids` holds py-spy's own pid,
    for the caller to leave out of CPU and memory counts."""

    def __init__(self, pid: int | None = None, rate: int = 100, start_timeout: float = 10.0) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.rate, self.start_timeout = rate, start_timeout
        self.held_seconds: float | None = None
        self.seconds: float | None = None
        self.reason = ""
        self.pids: frozenset[int] = frozenset()
        self._proc: subprocess.Popen[str] | None = None
        self._out: Path | None = None
        self._lines: list[str] = []
        self._started = threading.Event()  # py-spy said it samples, or ended
        self._sampling = False
        self._reader: threading.Thread | None = None
        self._t0 = 0.0

    @property
    def share(self) -> float | None:
        """Share of the sampled wall time during which the GIL was held (None: not measured)."""
        if self.held_seconds is None or not self.seconds:
            return None
        return self.held_seconds / self.seconds

    def __enter__(self) -> GilSampler:
        exe = find_py_spy()
        if exe is None:
            self.reason = "py-spy is not installed (pip install 'sainet[bench]')"
        elif _refused:
            self.reason = _refused[0]  # it could not read this process before: no second 10 s wait
        else:
            try:
                self._start(exe)
            except BaseException:  # an interrupt while it starts: no py-spy, file or tracer left behind
                self._stop()
                self._cleanup()
                raise
        return self

    def _start(self, exe: str) -> None:
        fd, name = tempfile.mkstemp(prefix="sainet-gil-", suffix=".txt")
        os.close(fd)
        self._out = Path(name)
        cmd = [exe, "record", "--pid", str(self.pid), "--gil", "--nonblocking", "--format", "raw",
               "--rate", str(self.rate), "--output", name]
        try:  # py-spy waits for a line on stdin, so this process can name it as its tracer first (`_allow_tracer`)
            self._proc = subprocess.Popen(["/bin/sh", "-c", 'read _ && exec "$@"', "sh", *cmd], stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True,
                                          encoding="utf-8", errors="replace")
        except OSError as e:
            self.reason = f"py-spy did not start: {e}"
            self._cleanup()
            return
        self.pids = frozenset({self._proc.pid})
        _allow_tracer(self._proc.pid)
        stdin = self._proc.stdin
        try:
            if stdin is not None:
                stdin.write("go\n")
                stdin.close()
        except OSError:
            pass  # it died already: the reader sees it end
        self._reader = threading.Thread(target=self._read, name="sainet-gil-reader", daemon=True)
        self._reader.start()
        self._started.wait(self.start_timeout)
        if not self._sampling or self._proc.poll() is not None:
            self._stop()
            self.reason = "py-spy could not sample this process: " + (self._last_line() or "no answer")
            _refused[:] = [self.reason]
            self._cleanup()

    def _read(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            self._lines.append(line.strip())
            if _STARTED in line and not self._sampling:
                self._t0 = time.perf_counter()
                self._sampling = True
                self._started.set()
        self._started.set()  # py-spy ended (before it sampled, or after): let `_start` see it

    def _last_line(self) -> str:
        lines = [ln.removeprefix("py-spy> ") for ln in self._lines if ln]
        return lines[-1] if lines else ""

    def _stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop(self) -> None:
        """End the sampling now (the block's end does it otherwise) and set `held_seconds`,
        `seconds` and `share`, or `reason`. Idempotent."""
        if self._proc is None or self.reason or self.seconds is not None:
            return
        t1 = time.perf_counter()
        try:
            self._stop()
            try:
                raw = self._out.read_text(encoding="utf-8", errors="replace") if self._out is not None else ""
            except OSError as e:
                raw, self.reason = "", f"py-spy's output could not be read: {e}"
            behind = [ln for ln in self._lines if "behind" in ln]
            if behind:  # it took fewer samples than the rate: the share would be too low
                self.reason = "py-spy fell behind its sampling rate: " + behind[0].removeprefix("py-spy> ")
            elif not self.reason and self._proc.returncode not in (0, None):
                self.reason = f"py-spy exited with {self._proc.returncode}: {self._last_line()}"
            elif not self.reason:
                self.seconds = t1 - self._t0
                self.held_seconds = min(self.seconds, held_samples(raw) / self.rate)
            if self.reason:
                log.warning("GIL share not measured: %s", self.reason)
        finally:
            self._cleanup()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _cleanup(self) -> None:
        _allow_tracer(0)
        if self._out is not None:
            self._out.unlink(missing_ok=True)
            self._out = None
