"""The sandbox's bubblewrap mode, the isolation a service that is not root gives client code.

Run as root here (``mode="bwrap"`` works for root too): what the program can reach is decided by
bubblewrap's mounts and namespaces, not by the uid. Needs Debian's ``bubblewrap`` package;
without it these tests skip (unless ``TTC_REQUIRE_BWRAP`` is set, as in CI: then they fail).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from verifiers._bubblewrap import bwrap, isolation_status
from verifiers._sandbox import SandboxLimits, run_sandboxed

MiB = 1 << 20

PROBE = r"""
import json, os, socket, sys
out = {}
def attempt(name, fn):
    try:
        out[name] = ["ok", repr(fn())[:200]]
    except Exception as exc:
        out[name] = ["denied", type(exc).__name__]
attempt("secret", lambda: open(sys.argv[1] if len(sys.argv) > 1 else SECRET).read())
attempt("parent_environ", lambda: open(f"/proc/{PARENT}/environ").read())
attempt("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
attempt("network", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=2))
attempt("write_outside", lambda: open(WRITE, "w").write("x"))
attempt("write_here", lambda: open("mine.txt", "w").write("x"))
attempt("tmp", lambda: os.listdir("/tmp"))
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def _need_bwrap() -> None:
    if bwrap() is None:
        reason = "bubblewrap is not usable here (apt-get install -y bubblewrap)"
        if os.environ.get("TTC_REQUIRE_BWRAP") or os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def test_the_program_sees_none_of_the_services_files_processes_or_network(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "store.db"  # stands for the service's store, configs, keys
    secret.write_text("API KEY HASHES")
    outside = tmp_path / "written.txt"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    code = (
        f"SECRET = {str(secret)!r}\nPARENT = {os.getpid()}\n"
        f"PORT = {listener.getsockname()[1]}\nWRITE = {str(outside)!r}\n" + PROBE
    )
    try:
        result = asyncio.run(run_sandboxed(code, mode="bwrap"))
    finally:
        listener.close()
    assert result.ok, result.stderr
    seen = json.loads(result.stdout)
    for name in ("secret", "parent_environ", "network", "write_outside"):
        assert seen[name][0] == "denied", (name, seen[name])
    pids = json.loads(seen["pids"][1])
    assert os.getpid() not in pids and len(pids) <= 4  # its own PID namespace
    assert seen["write_here"][0] == "ok"
    assert seen["tmp"][0] == "ok" and len(json.loads(seen["tmp"][1].replace("'", '"'))) == 1
    # /tmp is empty but for the sandbox's own working directory
    assert not outside.exists() and "API KEY" not in result.stdout
    assert result.network_isolated and result.filesystem_isolated
    assert result.leftover_processes == 0


def test_the_working_directory_is_capped_at_disk_bytes() -> None:
    code = "open('big', 'wb').write(b'x' * (3 << 20))\nprint('wrote')"
    limits = SandboxLimits(disk_bytes=1 * MiB)
    result = asyncio.run(run_sandboxed(code, mode="bwrap", limits=limits))
    assert not result.ok and "wrote" not in result.stdout
    assert "No space left" in result.stderr or "OSError" in result.stderr


def test_limits_still_apply_inside_bwrap() -> None:
    result = asyncio.run(
        run_sandboxed("while True: pass", mode="bwrap", limits=SandboxLimits(wall_seconds=1))
    )
    assert result.timed_out and result.leftover_processes == 0


def test_isolation_status_says_how_client_code_is_isolated() -> None:
    isolated, how = isolation_status()
    assert isolated and ("root" in how or "bubblewrap" in how)
