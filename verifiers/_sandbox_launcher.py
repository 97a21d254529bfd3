"""The sandbox launcher: a standalone, standard-library-only program.

``verifiers._sandbox`` runs this file's source with ``python -I -S -c`` (so it needs no access to
this file or to the virtualenv) between the service and the untrusted program. It isolates the
network and, as root, the filesystem; forks the program with its rlimits and dropped privileges;
acts as child subreaper so every process the program starts stays in its subtree; and on exit or
SIGTERM kills and reaps that whole subtree. It reports through the ``status_fd`` pipe as JSON
lines. Configuration comes as one JSON argument (see ``verifiers._sandbox._Run``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import sys
from typing import Any, NoReturn

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18,
)  # fmt: skip
_MS_KEEP = ((b"nosuid", 2), (b"nodev", 4), (b"noexec", 8), (b"noatime", 1024))
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _l_children() -> list[int]:
    """The launcher's direct children (it is single-threaded, so its main task's list)."""
    me = os.getpid()
    with open(f"/proc/{me}/task/{me}/children") as f:
        return [int(p) for p in f.read().split()]


def _l_kill_tree() -> None:
    """SIGKILL and reap every descendant; orphans re-parent to us (subreaper), so repeat."""
    while True:
        for pid in _l_children():
            for kill in (os.killpg, os.kill):  # the program leads its own process group
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _l_isolate_fs(libc: ctypes.CDLL, cfg: dict[str, Any]) -> bool:
    """Private mounts: tmpfs masks and working directory, all else read-only; False on failure."""
    work, disk, uid = cfg["workdir"], cfg["disk"], cfg["uid"]
    with open("prog.py", "rb") as f:
        code = f.read()
    if libc.unshare(_CLONE_NEWNS) or libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None):
        return False
    tmpfs = _MS_NOSUID | _MS_NODEV
    for mask in {"/tmp", "/var/tmp", "/run", os.path.dirname(work)} - {"/"}:
        if os.path.isdir(mask) and not os.path.islink(mask):
            libc.mount(b"tmpfs", mask.encode(), b"tmpfs", tmpfs, b"size=1m,mode=0755")
    os.makedirs(work, exist_ok=True)
    opts = f"size={disk},mode=0700,uid={uid},gid={uid}".encode()
    if libc.mount(b"tmpfs", work.encode(), b"tmpfs", tmpfs, opts):
        return False
    os.chdir(work)
    with open("prog.py", "wb") as f:
        f.write(code)
    ok = True
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = [line.split() for line in f.read().splitlines()]
    for m in mounts:
        target = re.sub(rb"\\([0-7]{3})", lambda g: bytes([int(g[1], 8)]), m[4])
        opts_ = m[5].split(b",")
        if target != work.encode() and b"ro" not in opts_:
            keep = sum(flag for name, flag in _MS_KEEP if name in opts_)
            flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep
            ok = libc.mount(None, target, None, flags, None) == 0 and ok
    shm = f"size={disk},mode=1777".encode()
    return libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", tmpfs, shm) == 0 and ok


def _l_exec(cfg: dict[str, Any]) -> NoReturn:
    """In the forked child: limits, then drop privileges, then exec the program."""
    try:
        os.setpgid(0, 0)
        for name, soft, hard in cfg["rlimits"]:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if cfg["uid"] is not None:
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        os.umask(0o077)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.execve(cfg["python"], [cfg["python"], "-I", "prog.py"], cfg["env"])
    except BaseException as exc:
        os.write(cfg["status_fd"], (json.dumps({"setup_error": repr(exc)}) + "\n").encode())
    os._exit(126)


def _l_run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Isolate, start the program, reap orphans until it ends; its exit status."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the service died: clean up
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    orphaned = cfg["parent"] is not None and os.getppid() != cfg["parent"]
    if orphaned or os.read(cfg["go_fd"], 1) != b"1":
        return {"stopped": True}
    root = cfg["uid"] is not None
    net = libc.unshare(_CLONE_NEWNET if root else _CLONE_NEWNET | _CLONE_NEWUSER) == 0
    fs = root and _l_isolate_fs(libc, cfg)
    os.write(cfg["status_fd"], (json.dumps({"net": net, "fs": fs}) + "\n").encode())
    child = os.fork()
    if child == 0:
        _l_exec(cfg)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return {"exit": os.waitstatus_to_exitcode(status)}


def _launcher_main() -> None:
    """The launcher's entry point: SIGTERM (from the parent) means stop everything now."""
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    for fd in (cfg["status_fd"], cfg["go_fd"]):
        os.set_inheritable(fd, False)
    outcome: dict[str, Any] = {"stopped": True}
    try:
        outcome = _l_run(cfg)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _l_kill_tree()
    os.write(cfg["status_fd"], (json.dumps(outcome) + "\n").encode())


if __name__ == "__main__":
    _launcher_main()
