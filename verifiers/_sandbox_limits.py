"""The sandbox's resource limits and the outcome of one sandboxed run (``verifiers._sandbox``).

Every limit is a ``resources`` field (``orchestrator.trust``): a client of the service sets one
only when granted, and never above the operator's ``resource_caps``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.trust import privileged

MiB = 1 << 20
KillReason = Literal["wall", "cpu", "output", "signal"]


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed program run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    wall_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="wall-clock limit",
        json_schema_extra=privileged("resources", "wall-clock time"),
    )
    cpu_seconds: int = Field(
        5,
        ge=1,
        le=600,
        description="CPU time per process (RLIMIT_CPU)",
        json_schema_extra=privileged("resources", "CPU time"),
    )
    memory_bytes: int = Field(
        512 * MiB,
        ge=64 * MiB,
        description="address space (RLIMIT_AS)",
        json_schema_extra=privileged("resources", "address space"),
    )
    max_processes: int = Field(
        8,
        ge=1,
        le=256,
        description="processes+threads (RLIMIT_NPROC)",
        json_schema_extra=privileged("resources", "processes and threads"),
    )
    file_size_bytes: int = Field(
        10 * MiB,
        ge=0,
        description="largest file (RLIMIT_FSIZE)",
        json_schema_extra=privileged("resources", "largest file"),
    )
    disk_bytes: int = Field(
        64 * MiB,
        ge=MiB,
        description="tmpfs size of the working directory",
        json_schema_extra=privileged("resources", "working directory size"),
    )
    output_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="cap on stdout and on stderr",
        json_schema_extra=privileged("resources", "output kept"),
    )


class SandboxResult(BaseModel):
    """What happened to one sandboxed run (a failing or killed program is a normal result)."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None = Field(description="-N for signal N; None: the sandbox stopped it")
    timed_out: bool = Field(False, description="the wall-clock limit stopped it")
    killed_reason: KillReason | None = Field(None, description="signal = e.g. hard CPU limit")
    stdout: str = Field("", description="decoded, cut at output_bytes")
    stderr: str = Field("", description="decoded, cut at output_bytes")
    truncated: bool = Field(False, description="stdout or stderr was cut")
    seconds: float = Field(0.0, description="wall time from start to the end of cleanup")
    network_isolated: bool = False
    filesystem_isolated: bool = False
    uid: int | None = Field(None, description="the uid it ran as; None: ours (not root)")
    pid: int = Field(0, description="the launcher's pid, also the sandbox's session id")
    leftover_processes: int = Field(0, description="still alive after cleanup (expect 0)")

    @property
    def ok(self) -> bool:
        """The program exited with status 0 on its own."""
        return self.exit_code == 0 and self.killed_reason is None
