"""Run untrusted Python in a subprocess sandbox: ``await run_sandboxed(code, limits=...)``.

The program runs as ``python -I prog.py`` in a fresh ``tempfile.mkdtemp()`` directory (removed
afterwards) with a minimal environment (PATH, LANG, HOME = TMPDIR = that directory). Between us
and the program sits a *launcher* (``_sandbox_launcher.py``, run with ``-I -S -c``) in a new
session. It is a child subreaper, so everything the program forks
stays in its subtree; when the program ends, or we send SIGTERM (wall clock, output cap,
cancellation), it SIGKILLs and reaps that subtree, then exits. We then sweep /proc for anything
of the sandbox still alive, kill it, and report survivors as ``leftover_processes``.

When we are root (the service's normal case):

- **user**: a dedicated uid/gid ``UID_BASE + k`` per concurrent sandbox (an ``flock`` in
  ``$TMPDIR/ttc-sandbox-uids`` keeps sandboxes of any process apart), no supplementary groups;
  so ``RLIMIT_NPROC`` holds, per sandbox, and the sweep can kill "every process of that uid".
- **rlimits** (per process, so memory can reach ``max_processes * memory_bytes``): CPU seconds
  (SIGXCPU, SIGKILL a second later), address space, processes and threads, file size, 256 open
  files, no core dumps.
- **network**: a new network namespace with no interface up: every connection fails.
- **filesystem**: a private mount namespace where every mount is read-only except the working
  directory (a tmpfs of ``disk_bytes``) and a private ``/dev/shm``; ``/tmp``, ``/var/tmp``,
  ``/run`` and the directory's parent are masked by empty tmpfs mounts, which also hides the
  Unix sockets there (databases, agents).
- **wall clock, output**: enforced here; stdout and stderr are each kept up to
  ``output_bytes``, and the sandbox is stopped as soon as either overflows.

Without root, mode ``bwrap`` (the default when bubblewrap is usable, see
``verifiers._bubblewrap``): the launcher runs inside ``bwrap``, which shows it only the system
directories and the interpreter (read-only), its working directory (a tmpfs of ``disk_bytes``)
and an empty ``/tmp``, in new user, PID and network namespaces: no file of the service, no
process of the host, no network. Mode ``plain`` (not root, no usable bubblewrap): no uid switch
and no mount namespace; the program runs as our user and can read and write wherever we can,
and the network is isolated with ``unshare(CLONE_NEWUSER | CLONE_NEWNET)`` where unprivileged
user namespaces are allowed; the service refuses client code then (``isolation_status``). In
both, ``RLIMIT_NPROC`` is our user's process count plus ``max_processes``. The result says
which protections were in place (``network_isolated``, ``filesystem_isolated``, ``uid``).
Never covered as root: reading world-readable files, seeing other processes in /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, Literal

from orchestrator.errors import TTCError
from verifiers._bubblewrap import bwrap, bwrap_argv, isolation_status
from verifiers._sandbox_limits import KillReason, MiB, SandboxLimits, SandboxResult

#: The sandbox uids: ``UID_BASE + k`` for k in ``range(UID_COUNT)`` (no passwd entries needed).
UID_BASE = 2_100_000
UID_COUNT = 256
_GRACE_SECONDS = 1.0  # how long the launcher gets to kill and reap its subtree
SandboxMode = Literal["root", "bwrap", "plain"]

__all__ = [
    "MiB", "SandboxError", "SandboxLimits", "SandboxMode", "SandboxResult", "default_mode",
    "isolation_status", "run_sandboxed",
]  # fmt: skip


def default_mode() -> SandboxMode:
    """``root`` as root, else ``bwrap`` when bubblewrap is usable, else ``plain``."""
    if os.geteuid() == 0:
        return "root"
    return "bwrap" if bwrap() is not None else "plain"


class SandboxError(TTCError):
    """The sandbox itself could not run the program (not the program's fault)."""


@functools.cache
def _launcher_source() -> str:
    """The launcher program (``_sandbox_launcher.py``), run with ``-c``."""
    return Path(__file__).with_name("_sandbox_launcher.py").read_text()


# --- the parent side --------------------------------------------------------------------------


def _usable_by_anyone(path: str) -> bool:
    """Whether a uid that owns nothing may execute ``path`` (every directory searchable)."""
    dirs = [os.path.realpath(path)]
    while dirs[-1] != "/":
        dirs.append(os.path.dirname(dirs[-1]))
    try:
        other_rx = stat.S_IROTH | stat.S_IXOTH
        return os.stat(dirs[0]).st_mode & other_rx == other_rx and all(
            os.stat(d).st_mode & stat.S_IXOTH for d in dirs[1:]
        )
    except OSError:
        return False


@functools.cache
def sandbox_python(privileged: bool) -> str:
    """The interpreter that runs the program: ``$TTC_SANDBOX_PYTHON``, else this one, else a
    system ``python3`` when the sandbox uid (privileged mode) cannot execute this one."""
    override = os.environ.get("TTC_SANDBOX_PYTHON")
    if override or not privileged:
        return override or sys.executable
    v = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = "/usr/local/bin:/usr/bin:/bin"
    for found in (sys.executable, shutil.which(v, path=path), shutil.which("python3", path=path)):
        if found and _usable_by_anyone(found):
            return found
    raise SandboxError(
        f"no Python interpreter usable by an unprivileged uid ({sys.executable} is not): "
        "install a system python3 or set TTC_SANDBOX_PYTHON"
    )


def _proc_status(pid: str) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (empty when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return {}


def sandbox_processes(uid: int | None, sid: int) -> list[int]:
    """Live (non-zombie) processes of a sandbox: those of ``uid``, else of session ``sid``."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        st = _proc_status(name)
        if not st or st.get("State", "Z").startswith("Z"):
            continue
        key, want = ("Uid", uid) if uid is not None else ("NSsid", sid)
        if int(st.get(key, "-1").split()[0]) == want:
            found.append(int(name))
    return found


def _sweep(uid: int | None, sid: int, deadline: float = _GRACE_SECONDS) -> int:
    """SIGKILL the sandbox's processes until none is left; how many survived ``deadline``."""
    give_up = time.monotonic() + deadline
    while (pids := sandbox_processes(uid, sid)) and time.monotonic() < give_up:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    return len(pids)


@contextlib.asynccontextmanager
async def _uid_slot(privileged: bool) -> AsyncIterator[int | None]:
    """An exclusive sandbox uid (None when not root), held by an flock for the block."""
    if not privileged:
        yield None
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "ttc-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    start = os.getpid() % UID_COUNT
    while True:
        for k in range(UID_COUNT):
            uid = UID_BASE + (start + k) % UID_COUNT
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if not sandbox_processes(uid, 0):
                try:
                    yield uid
                finally:
                    os.close(fd)
                return
            os.close(fd)  # someone else's processes (or zombies) use it: skip
        await asyncio.sleep(0.05)


def _rlimits(limits: SandboxLimits, uid: int | None) -> list[tuple[str, int, int]]:
    """The child's rlimits; without root, NPROC counts the user's other processes too."""
    nproc = limits.max_processes
    if uid is None:
        nproc += len(sandbox_processes(os.getuid(), 0))
    wanted = [
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        ("RLIMIT_NPROC", nproc, nproc),
        ("RLIMIT_FSIZE", limits.file_size_bytes, limits.file_size_bytes),
        ("RLIMIT_NOFILE", 256, 256),
    ]
    out = []
    for name, soft, hard in wanted:  # never above our own hard limit
        cap = resource.getrlimit(getattr(resource, name))[1]
        hard = hard if cap == resource.RLIM_INFINITY else min(hard, cap)
        out.append((name, min(soft, hard), hard))
    return out


class _Run:
    """One sandboxed execution: spawn the launcher, watch it, stop it, sweep (per-call state)."""

    def __init__(
        self, limits: SandboxLimits, uid: int | None, workdir: str, mode: SandboxMode
    ) -> None:
        self.limits, self.uid, self.workdir, self.mode = limits, uid, workdir, mode
        self.reason: KillReason | None = None
        self.out, self.err = bytearray(), bytearray()
        self.truncated = False
        self.leftover = 0

    async def execute(self, stdin: IO[bytes]) -> SandboxResult:
        """Run the program in ``workdir``; raises SandboxError when it could not be started."""
        t0 = time.perf_counter()
        status_r, status_w = os.pipe()
        go_r, go_w = os.pipe()
        try:
            try:
                proc = await self._spawn(stdin, status_w, go_r)
            finally:
                os.close(status_w)
                os.close(go_r)
            os.write(go_w, b"1")  # only now may the launcher start the program
        finally:
            os.close(go_w)
        try:
            await self._watch(proc)
            report = _read_reports(status_r)
        finally:
            os.close(status_r)
        if "setup_error" in report:
            raise SandboxError(f"the sandbox could not start the program: {report['setup_error']}")
        return self._result(report, proc.pid, time.perf_counter() - t0)

    async def _spawn(self, stdin: IO[bytes], status_w: int, go_r: int) -> Any:
        privileged = self.uid is not None
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env |= {"HOME": self.workdir, "TMPDIR": self.workdir}
        jail = bwrap_argv(self.workdir, self.limits.disk_bytes) if self.mode == "bwrap" else []
        cfg = {
            "parent": None if jail else os.getpid(), "uid": self.uid, "workdir": self.workdir,
            "env": env,
            "python": sandbox_python(privileged), "status_fd": status_w, "go_fd": go_r,
            "disk": self.limits.disk_bytes, "rlimits": _rlimits(self.limits, self.uid),
        }  # fmt: skip
        return await asyncio.create_subprocess_exec(
            *jail, sys.executable, "-I", "-S", "-c", _launcher_source(), json.dumps(cfg),
            stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=self.workdir, env=env, start_new_session=True, pass_fds=(status_w, go_r),
        )  # fmt: skip

    async def _watch(self, proc: Any) -> None:
        readers = [
            asyncio.create_task(self._drain(proc.stdout, self.out, proc)),
            asyncio.create_task(self._drain(proc.stderr, self.err, proc)),
        ]
        try:
            async with asyncio.timeout(self.limits.wall_seconds):
                await proc.wait()
                await asyncio.wait(readers)
        except TimeoutError:
            self.reason = self.reason or "wall"
        finally:
            await self._stop(proc, readers)

    async def _drain(self, stream: asyncio.StreamReader, buf: bytearray, proc: Any) -> None:
        """Keep up to ``output_bytes``; on overflow stop the sandbox, then read on to EOF."""
        while chunk := await stream.read(1 << 16):
            room = self.limits.output_bytes - len(buf)
            buf += chunk[: max(room, 0)]
            if len(chunk) > room and not self.truncated:
                self.truncated = True
                self.reason = self.reason or "output"
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)

    async def _stop(self, proc: Any, readers: list[asyncio.Task[None]]) -> None:
        """SIGTERM the launcher (it kills its subtree), wait a little, then sweep by force."""
        try:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_GRACE_SECONDS):
                        await proc.wait()
            await asyncio.wait(readers, timeout=_GRACE_SECONDS)
        finally:  # also when cancelled again while waiting
            for task in readers:
                task.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            if self.uid is not None or proc.returncode != 0:
                self.leftover = _sweep(self.uid, proc.pid)

    def _result(self, report: dict[str, Any], pid: int, seconds: float) -> SandboxResult:
        code = report.get("exit")
        reason = self.reason
        if reason is None and code is None:  # the launcher died: as root, not the program's doing
            if self.uid is not None:
                tail = self.err[-500:].decode(errors="replace")
                raise SandboxError(f"the sandbox launcher failed: {tail}")
            reason = "signal"  # without root the program can kill its launcher
        if reason is None and code is not None and code < 0:
            reason = "cpu" if code == -signal.SIGXCPU else "signal"
        return SandboxResult(
            exit_code=None if self.reason else code,
            timed_out=self.reason == "wall",
            killed_reason=reason,
            stdout=self.out.decode("utf-8", "replace"),
            stderr=self.err.decode("utf-8", "replace"),
            truncated=self.truncated,
            seconds=seconds,
            network_isolated=bool(report.get("net")) or self.mode == "bwrap",
            filesystem_isolated=bool(report.get("fs")) or self.mode == "bwrap",
            uid=self.uid,
            pid=pid,
            leftover_processes=self.leftover,
        )


def _read_reports(fd: int) -> dict[str, Any]:
    """The launcher's JSON report lines, merged (it wrote them before exiting)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            data += chunk
    report: dict[str, Any] = {}
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            report |= json.loads(line)
    return report


async def run_sandboxed(
    code: str,
    *,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    mode: SandboxMode | None = None,
) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox (see the module docstring).

    Args:
        code: the program's source, run as ``__main__``.
        stdin: what the program reads on standard input.
        limits: resource limits (default ``SandboxLimits()``).
        mode: ``root``, ``bwrap`` or ``plain`` (see the module docstring; default
            ``default_mode()``); ``bwrap`` also works as root (tests use it).

    Returns:
        The outcome; a program that fails, crashes or is killed is a normal result. When this
        returns, or raises (``CancelledError`` included), no process of the sandbox is left
        (``leftover_processes`` reports a failure to ensure it) and its directory is gone.

    Raises:
        SandboxError: no usable interpreter, or the program could not be started.
    """
    limits = limits or SandboxLimits()
    mode = mode or default_mode()
    if mode == "root" and os.geteuid() != 0:
        raise SandboxError("sandbox mode 'root' needs root; use 'bwrap' or 'plain'")
    sandbox_python(mode == "root")  # fail early, before taking a uid
    async with _uid_slot(mode == "root") as uid:
        workdir = os.path.realpath(tempfile.mkdtemp(prefix="ttc-sandbox-"))
        try:
            with open(os.path.join(workdir, "prog.py"), "w", encoding="utf-8") as f:
                f.write(code)
            if uid is not None:
                os.chown(workdir, uid, uid)
            with tempfile.TemporaryFile() as stdin_file:
                stdin_file.write(stdin.encode("utf-8"))
                stdin_file.seek(0)
                return await _Run(limits, uid, workdir, mode).execute(stdin_file)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
