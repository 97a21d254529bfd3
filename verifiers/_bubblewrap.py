"""Filesystem, process and network isolation without root: bubblewrap (``bwrap``).

When the service does not run as root, ``verifiers._sandbox`` starts its launcher inside
``bwrap`` (Debian package ``bubblewrap``; it needs unprivileged user namespaces, which Debian
enables) when one is usable here. The sandbox then sees:

* read-only: ``/usr`` (with the ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` links or mounts),
  a few files of ``/etc`` the interpreter needs, and the interpreter's own prefixes
  (``sys.base_prefix`` and the virtualenv's ``sys.prefix``); nothing else of the host: not the
  service's home, its store, its configs, other users' files;
* its working directory as a tmpfs of ``disk_bytes`` holding the program (read-only), and an
  empty ``/tmp``;
* new user, PID, network, IPC, UTS and cgroup namespaces (``--unshare-all``): no network
  interface but loopback, no other process of the host in ``/proc``, so no
  ``/proc/<pid>/environ`` of the service; ``--die-with-parent`` and ``--new-session``.

:func:`isolation_status` says whether client code can be isolated on this machine (root, or a
usable ``bwrap``) and why not; the service refuses client code when it cannot.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

_ETC = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
_TOP = ("/bin", "/lib", "/lib64", "/lib32", "/sbin")


@functools.cache
def bwrap() -> str | None:
    """The ``bwrap`` executable when it can create a sandbox here (probed once), else None."""
    found = shutil.which("bwrap")
    if found is None:
        return None
    probe = [found, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return found if done.returncode == 0 else None


def isolation_status() -> tuple[bool, str]:
    """``(True, how)`` when sandboxed client code is isolated from the service's files,
    processes and network; ``(False, why not)`` otherwise."""
    if os.geteuid() == 0:
        return True, "root: a dedicated uid, private read-only mounts, no network"
    if bwrap() is not None:
        return True, "bubblewrap: only the interpreter and a private working directory"
    return False, (
        "the service does not run as root and bubblewrap is not usable here (install the "
        "`bubblewrap` package; it needs unprivileged user namespaces), so the sandbox could "
        "not keep client code away from the service's files and environment"
    )


def _system_mounts() -> list[str]:
    """Read-only mounts of the system and of this interpreter (nothing else of the host)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _TOP:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC:
        args += ["--ro-bind-try", path, path]
    prefixes = {sys.prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    for prefix in sorted(p for p in prefixes if not p.startswith("/usr/")):
        args += ["--ro-bind", prefix, prefix]
    return args


def bwrap_argv(workdir: str, disk_bytes: int) -> list[str]:
    """The ``bwrap`` command line (up to ``--``) for a sandbox whose program is
    ``workdir/prog.py`` (see the module docstring); ``workdir`` appears at the same path."""
    exe = bwrap()
    if exe is None:
        raise RuntimeError("bubblewrap is not usable here")
    return [
        exe,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
        *_system_mounts(),
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--size", str(disk_bytes), "--perms", "0700", "--tmpfs", workdir,
        "--ro-bind", os.path.join(workdir, "prog.py"), os.path.join(workdir, "prog.py"),
        "--chdir", workdir,
        "--",
    ]  # fmt: skip
