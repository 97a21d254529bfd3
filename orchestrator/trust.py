"""What a config field can do: the trust classification that decides what a service client may
set.

Every field of every strategy, verifier and backend config declares its class next to its
definition, in pydantic's ``json_schema_extra``:

* :func:`tuning` (sampling parameters, counts, thresholds, prompts, the choice of a registered
  strategy or verifier, a declared backend): anyone may set it. A field holding a nested spec
  says so, ``tuning(nested="strategy")`` / ``tuning(nested="verifier")`` (a spec, or a list
  of them), so the checks below follow it into the child's own config. A field with a
  ``search_hint`` is tuning by construction (``strategies.base.search_hint`` adds it).
* :func:`privileged` with one of the :data:`PRIVILEGES`: it loads code, reads or writes files,
  opens network connections, reads the environment, runs client-supplied code, sets resource
  limits, or picks a model the operator did not list. The CLI, the SDK's in-process use and the
  operator's own YAML (named configs, the service's default strategy) may set it; a client of
  the service only when the operator grants the privilege (or that one field) to its API key or
  to everyone in ``service.yaml``.

Declaring one::

    url: str | None = Field(None, json_schema_extra=privileged("network", "the URL it posts to"))
    n: int = Field(8, ge=1, json_schema_extra=tuning())

:func:`unclassified` lists the fields of a config model (and of the models nested in its tuning
fields) that declare nothing; a test runs it over every registered config. :func:`check_fields`
walks what a client wrote against those declarations and reports every privileged field it set
without a grant (:class:`Violation`) and every resource value above the operator's cap
(:class:`OverCap`). It sits at the bottom of the layers (pydantic only): the caller supplies
the lookup from a strategy or verifier name to its config class.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel

__all__ = [
    "PRIVILEGES",
    "ConfigLookup",
    "FieldTrust",
    "Nested",
    "OverCap",
    "Privilege",
    "SpecCheck",
    "Violation",
    "check_fields",
    "check_grant",
    "check_overrides",
    "field_trust",
    "grant_name",
    "privileged",
    "redacted",
    "tuning",
    "unclassified",
]

Privilege = Literal["code", "files", "network", "environment", "client_code", "resources", "model"]
PRIVILEGES: dict[str, str] = {
    "code": "loads or imports code",
    "files": "reads or writes files of the server",
    "network": "opens network connections to an address it names",
    "environment": "reads the server's environment variables",
    "client_code": "runs code supplied by the client",
    "resources": "sets resource limits (time, memory, disk, processes, concurrency, retries)",
    "model": "picks a model or backend setting the operator did not list",
}
"""Each privilege and what a field holding it can do."""
Nested = Literal["strategy", "verifier"]
Level = Literal["tuning", "privileged"]


def tuning(*, nested: Nested | None = None) -> dict[str, Any]:
    """``json_schema_extra`` of a tuning field; ``nested`` when it holds a strategy or
    verifier spec (or a list of them), so the trust check follows it."""
    trust: dict[str, Any] = {"level": "tuning"}
    if nested is not None:
        trust["nested"] = nested
    return {"trust": trust}


def privileged(privilege: Privilege, reason: str) -> dict[str, Any]:
    """``json_schema_extra`` of a privileged field: its privilege and, in a few words, what it
    does (the 403 a client gets quotes it)."""
    if privilege not in PRIVILEGES:
        raise ValueError(f"unknown privilege {privilege!r}; known: {', '.join(PRIVILEGES)}")
    return {"trust": {"level": "privileged", "privilege": privilege, "reason": reason}}


@dataclass(frozen=True)
class FieldTrust:
    """A field's declared class (see the module docstring)."""

    level: Level
    privilege: Privilege | None = None
    reason: str = ""
    nested: Nested | None = None


def field_trust(model: type[BaseModel], name: str) -> FieldTrust | None:
    """The class ``model``'s field ``name`` declares, or None when it declares none."""
    info = model.model_fields.get(name)
    extra = info.json_schema_extra if info is not None else None
    trust = extra.get("trust") if isinstance(extra, dict) else None
    if not isinstance(trust, dict) or trust.get("level") not in ("tuning", "privileged"):
        return None
    privilege, nested = trust.get("privilege"), trust.get("nested")
    return FieldTrust(
        level=cast(Level, trust["level"]),
        privilege=cast(Privilege, privilege) if privilege in PRIVILEGES else None,
        reason=str(trust.get("reason", "")),
        nested=cast(Nested, nested) if nested in ("strategy", "verifier") else None,
    )


def _sub_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models inside an annotation (``Model``, ``list[Model]``, unions ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in get_args(annotation):
        yield from _sub_models(arg)


def unclassified(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model`` that declare no class, recursing into the models
    nested in its tuning fields (a client reaches their fields too)."""
    missing: list[str] = []
    for name, info in model.model_fields.items():
        trust = field_trust(model, name)
        if trust is None:
            missing.append(prefix + name)
        elif trust.level == "tuning":
            for sub in _sub_models(info.annotation):
                missing.extend(unclassified(sub, f"{prefix}{name}."))
    return missing


def check_grant(grant: str) -> str:
    """``grant`` if it is a privilege name or a single field (``strategy.<name>.<field>`` or
    ``verifier.<name>.<field>``), else ValueError saying what is allowed."""
    parts = grant.split(".")
    if grant in PRIVILEGES or (len(parts) >= 3 and parts[0] in ("strategy", "verifier")):
        return grant
    raise ValueError(
        f"unknown grant {grant!r}: expected a privilege ({', '.join(PRIVILEGES)}) or one field "
        "as strategy.<name>.<field> or verifier.<name>.<field>"
    )


def grant_name(kind: Nested, name: str, path: str) -> str:
    """The grant that allows one field alone, e.g. ``verifier.unit_tests.tests``."""
    return f"{kind}.{name}.{path}"


# -- checking what a client wrote ---------------------------------------------------------------

ConfigLookup = Callable[[Nested, str], type[BaseModel] | None]
"""``(kind, name) -> Config`` for a registered strategy or verifier name, or a named config
(its base strategy's Config); None for an unknown name (the build step reports it)."""


@dataclass(frozen=True)
class Violation:
    """A privileged field set without a grant.

    Attributes:
        param: where the client wrote it, e.g. ``strategy.verifier.url``.
        owner: whose field it is, e.g. ``verifier 'reward_model'``.
        privilege: the privilege it needs; grant: the grant for this one field.
        reason: what the field does.
    """

    param: str
    owner: str
    privilege: Privilege
    grant: str
    reason: str


@dataclass(frozen=True)
class OverCap:
    """A resource value above the operator's cap: ``param`` = ``value`` > ``cap``."""

    param: str
    value: float
    cap: float


@dataclass
class SpecCheck:
    """What :func:`check_fields` found: privileged fields set without a grant, granted
    resource values above their caps, the params of granted ``client_code`` fields (the
    service must still be able to isolate that code) and the strategy levels written."""

    violations: list[Violation] = field(default_factory=list)
    over_caps: list[OverCap] = field(default_factory=list)
    granted_client_code: list[str] = field(default_factory=list)
    depth: int = 0


@dataclass(frozen=True)
class _Walk:
    lookup: ConfigLookup
    grants: Collection[str]
    caps: Mapping[str, float]
    max_depth: int
    out: SpecCheck


def check_fields(
    kind: Nested,
    spec: Any,
    param: str,
    *,
    lookup: ConfigLookup,
    grants: Collection[str] = (),
    caps: Mapping[str, float] | None = None,
    max_depth: int = 16,
) -> SpecCheck:
    """Check a client's ``spec`` (a name, or ``{"strategy"|"verifier": name, **fields}``)
    written at ``param``.

    Every field the client set is looked up in its config: a privileged field needs its
    privilege, or the :func:`grant_name` of that field or of a field holding it, in ``grants``;
    a granted resource field named in ``caps`` may not exceed its cap; nested specs are
    followed (a bare name is the operator's: nothing to check). Nesting deeper than
    ``max_depth`` strategy levels is not followed further (``depth`` then exceeds it).
    Unknown fields and names are left to the config validation that follows.
    """
    walk = _Walk(lookup, frozenset(grants), caps or {}, max_depth, SpecCheck())
    _spec(walk, kind, spec, param, 0)
    return walk.out


def check_overrides(
    kind: Nested,
    name: str,
    fields: Mapping[str, Any],
    param: str,
    *,
    lookup: ConfigLookup,
    grants: Collection[str] = (),
    caps: Mapping[str, float] | None = None,
    max_depth: int = 16,
) -> SpecCheck:
    """:func:`check_fields` for config ``fields`` a client sets on the spec called ``name``
    (e.g. the top-level fields of the OpenAI route's ``ttc`` object), written at ``param``."""
    walk = _Walk(lookup, frozenset(grants), caps or {}, max_depth, SpecCheck())
    config = lookup(kind, name)
    walk.out.depth = 1 if kind == "strategy" else 0
    if config is not None:
        _fields(walk, config, kind, name, fields, param, walk.out.depth)
    return walk.out


def _spec(walk: _Walk, kind: Nested, spec: Any, param: str, depth: int) -> None:
    """One nested spec (or a list of them) at ``param``."""
    if isinstance(spec, list):
        for i, item in enumerate(spec):
            _spec(walk, kind, item, f"{param}.{i}", depth)
        return
    level = depth + (kind == "strategy")
    walk.out.depth = max(walk.out.depth, level)
    if not isinstance(spec, Mapping) or level > walk.max_depth:
        return
    name = spec.get(kind)
    config = walk.lookup(kind, name) if isinstance(name, str) else None
    if config is not None:
        _fields(walk, config, kind, str(name), spec, param, level)


def _fields(
    walk: _Walk,
    config: type[BaseModel],
    kind: Nested,
    name: str,
    data: Mapping[str, Any],
    param: str,
    depth: int,
    prefix: str = "",
) -> None:
    """The fields of one config (or of a model nested in it) that the client set."""
    for key, value in data.items():
        if key == kind and not prefix:
            continue
        trust = field_trust(config, key) if isinstance(key, str) else None
        if trust is None:
            continue  # unknown: the config validation names it
        where = f"{param}.{key}"
        if trust.level == "privileged":
            _privileged(walk, trust, kind, name, prefix + key, where, value)
        if trust.nested is not None:
            _spec(walk, trust.nested, value, where, depth)
        elif trust.level == "tuning" or _granted(walk, trust, kind, name, prefix + key):
            _sub_fields(walk, config, kind, name, key, value, where, depth, prefix)


def _sub_fields(
    walk: _Walk,
    config: type[BaseModel],
    kind: Nested,
    name: str,
    key: str,
    value: Any,
    where: str,
    depth: int,
    prefix: str,
) -> None:
    """Follow a value into the pydantic model(s) its field holds (a mapping, or a list of)."""
    models = list(_sub_models(config.model_fields[key].annotation))
    if not models:
        return
    items = value if isinstance(value, list) else [value]
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            at = f"{where}.{i}" if isinstance(value, list) else where
            _fields(walk, models[0], kind, name, item, at, depth, f"{prefix}{key}.")


def _granted(walk: _Walk, trust: FieldTrust, kind: Nested, name: str, path: str) -> bool:
    """The privilege is granted, or this field, or a field holding it (``limits`` for
    ``limits.memory_bytes``)."""
    if trust.privilege in walk.grants:
        return True
    parts = path.split(".")
    return any(
        grant_name(kind, name, ".".join(parts[:i])) in walk.grants for i in range(1, len(parts) + 1)
    )


def _privileged(
    walk: _Walk,
    trust: FieldTrust,
    kind: Nested,
    name: str,
    path: str,
    where: str,
    value: Any,
) -> None:
    assert trust.privilege is not None
    if not _granted(walk, trust, kind, name, path):
        owner = f"{kind} {name!r}"
        grant = grant_name(kind, name, path)
        walk.out.violations.append(Violation(where, owner, trust.privilege, grant, trust.reason))
        return
    if trust.privilege == "client_code":
        walk.out.granted_client_code.append(where)
    cap = walk.caps.get(path.rsplit(".", 1)[-1]) if trust.privilege == "resources" else None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if cap is not None and number and value > cap:
        walk.out.over_caps.append(OverCap(where, float(value), float(cap)))


REDACTED = "<privileged>"


def redacted(kind: Nested, spec: Any, *, lookup: ConfigLookup, grants: Collection[str] = ()) -> Any:
    """A copy of ``spec`` whose privileged values (not covered by ``grants``) read
    ``"<privileged>"``: what a client may see of the operator's configs (URLs, paths,
    environment variable names stay on the server)."""
    found = check_fields(kind, spec, "", lookup=lookup, grants=grants, max_depth=64)
    if not found.violations:
        return spec
    out = copy.deepcopy(spec)
    for violation in found.violations:
        node: Any = out
        *parents, last = violation.param.split(".")[1:]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = REDACTED
    return out
