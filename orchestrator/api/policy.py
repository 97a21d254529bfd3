"""The service's trust boundary for request content: what a client may set, and how much.

A client (either API) may name the operator's strategies and named configs and set their tuning
fields. Privileged fields (``orchestrator.trust``: code, files, network, environment, client
code, resource limits, models) need a grant: the privilege or the single field, in
``settings.allow`` (every client) or in the API key's scopes (``ttc keys create --scope``). A
field set without one is refused with 403 (``type="permission_error"``,
``code="privileged_field"``, ``param`` the field's path) saying which grant allows it. The
operator's own YAML (named configs, ``default_strategy``) and the CLI are not checked: only
what the request itself carries is.

Caps (all in ``ServiceSettings``, answered 400 ``code="limit_exceeded"`` naming the limit):
strategy nesting (``max_depth``, checked on the request before anything is built, and on the
built tree), model samples per run (``max_samples_per_run`` against ``Strategy.max_samples()``
of the built tree, before any call), messages and characters (``max_messages``,
``max_chars``), and granted resource fields (``resource_caps``, by field name). A run's budget
is the request's (else ``default_budget``) with each limit capped by ``max_budget``
(``orchestrator.specs.run_budget``). Client-supplied tests in ``problem.metadata["tests"]`` are
client code like ``unit_tests.tests``; where the sandbox cannot isolate client code (not root
and no bubblewrap) a grant of it is refused with 403 saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from orchestrator.api.errors import APIError
from orchestrator.api.protocol import ChatMessage, ReasonRequest
from orchestrator.api.settings import ServiceSettings
from orchestrator.budget import Budget
from orchestrator.registry import strategies, verifiers
from orchestrator.runner import Orchestrator
from orchestrator.specs import Catalog, run_budget
from orchestrator.store.keys import ApiKey
from orchestrator.trust import (
    PRIVILEGES,
    ConfigLookup,
    Nested,
    SpecCheck,
    Violation,
    check_fields,
    redacted,
)
from orchestrator.trust import check_overrides as check_override_fields
from orchestrator.types import Problem
from strategies.base import Strategy
from verifiers.unit_tests import sandbox_isolation

PRIVILEGED = "privileged_field"
LIMIT = "limit_exceeded"


def limit_error(message: str, param: str | None) -> APIError:
    """400 for a request above one of the service's caps."""
    return APIError(400, message, param=param, code=LIMIT)


def privileged_error(v: Violation) -> APIError:
    """403 naming the field, what it does and the grants that allow it."""
    return APIError(
        403,
        f"{v.param} is a privileged field of {v.owner} ({v.reason}; it "
        f"{PRIVILEGES[v.privilege]}) and this request may not set it. The operator can allow "
        f"it for one API key (`ttc keys create NAME --scope {v.privilege}`, or `--scope "
        f"{v.grant}` for this field alone) or for every client (service.yaml: "
        f"`allow: [{v.grant}]`)",
        type="permission_error",
        param=v.param,
        code=PRIVILEGED,
    )


def tree_depth(strategy: Strategy) -> int:
    """Strategy levels of a built tree (a leaf is 1)."""
    return 1 + max((tree_depth(c) for c in strategy.children()), default=0)


class RequestPolicy:
    """Checks one service's requests against its settings (see the module docstring).

    Args:
        settings: the grants (``allow``) and caps.
        catalog: the named configs (a client may name them; their fields are the operator's).
    """

    def __init__(self, settings: ServiceSettings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or settings.catalog()

    def grants(self, key: ApiKey | None) -> frozenset[str]:
        """What this request may use: the global grants and the key's scopes."""
        return frozenset([*self.settings.allow, *(key.scopes if key is not None else ())])

    def lookup(self, kind: Nested, name: str) -> type[BaseModel] | None:
        """The config class of a registered strategy or verifier, or of a named config's base
        strategy; None for an unknown name (its build reports it)."""
        config = registered_config(kind, name)
        if config is not None or kind != "strategy" or name not in self.catalog.names():
            return config
        base = self.catalog.load(name).get("strategy")
        return registered_config("strategy", base) if isinstance(base, str) else None

    # -- request content ---------------------------------------------------------------------

    def check_reason(self, body: ReasonRequest, key: ApiKey | None, orch: Orchestrator) -> None:
        """The native request: its problem, strategy spec and model override."""
        self.check_problem(body.problem, key)
        if isinstance(body.strategy, Mapping):
            self.check_spec(body.strategy, "strategy", key)
        if is_model_override(orch, body.backend, body.model):
            self.check_model(key, "model")

    def check_spec(self, spec: Mapping[str, Any] | str, param: str, key: ApiKey | None) -> None:
        """A strategy spec as the client wrote it (a name is the operator's: nothing to do)."""
        found = check_fields(
            "strategy", spec, param, lookup=self.lookup, grants=self.grants(key),
            caps=self.settings.resource_caps, max_depth=self.settings.max_depth,
        )  # fmt: skip
        self._raise(found, param)

    def check_overrides(
        self, strategy: str, fields: Mapping[str, Any], param: str, key: ApiKey | None
    ) -> None:
        """Config fields a client sets on the (resolved) strategy ``strategy``."""
        found = check_override_fields(
            "strategy", strategy, fields, param, lookup=self.lookup, grants=self.grants(key),
            caps=self.settings.resource_caps, max_depth=self.settings.max_depth,
        )  # fmt: skip
        self._raise(found, param)

    def check_model(self, key: ApiKey | None, param: str) -> None:
        """A model override picks a model the operator did not list: the ``model`` grant."""
        if "model" not in self.grants(key):
            raise APIError(
                403,
                f"{param}: choosing a model other than the backend's is privileged (it "
                f"{PRIVILEGES['model']}); name a backend instead (GET /v1/models lists them), "
                "or ask the operator to grant `model` (`ttc keys create NAME --scope model`, or "
                "service.yaml `allow: [model]`)",
                type="permission_error",
                param=param,
                code=PRIVILEGED,
            )

    def check_problem(self, problem: Problem | str, key: ApiKey | None) -> None:
        """Characters of the question and system prompt; tests in its metadata."""
        if isinstance(problem, str):
            self.check_chars(len(problem), "problem")
            return
        self.check_chars(len(problem.question) + len(problem.system_prompt or ""), "problem")
        if "tests" in problem.metadata:
            self.check_client_code(key, "problem.metadata.tests")

    def check_client_code(self, key: ApiKey | None, param: str) -> None:
        """Client-supplied code needs the ``client_code`` grant and a sandbox that isolates."""
        grants = self.grants(key)
        if "client_code" not in grants and "verifier.unit_tests.tests" not in grants:
            raise APIError(
                403,
                f"{param}: tests a client supplies are code the server runs; the operator can "
                "allow them with `ttc keys create NAME --scope client_code` or service.yaml "
                "`allow: [client_code]`",
                type="permission_error",
                param=param,
                code=PRIVILEGED,
            )
        self.check_isolation(param)

    @staticmethod
    def check_isolation(param: str) -> None:
        """403 when the sandbox cannot isolate client code on this machine."""
        isolated, why = sandbox_isolation()
        if not isolated:
            raise APIError(
                403,
                f"{param}: this service refuses client code: {why}",
                type="permission_error",
                param=param,
                code="client_code_refused",
            )

    def check_messages(self, messages: Sequence[ChatMessage]) -> None:
        """At most ``max_messages`` messages of at most ``max_chars`` characters in all."""
        cap = self.settings.max_messages
        if len(messages) > cap:
            raise limit_error(
                f"{len(messages)} messages: this service accepts at most {cap} (max_messages)",
                "messages",
            )
        chars = 0
        for message in messages:
            if isinstance(message.content, str):
                chars += len(message.content)
            elif message.content is not None:
                chars += sum(len(part.text or "") for part in message.content)
        self.check_chars(chars, "messages")

    def check_chars(self, chars: int, param: str) -> None:
        """``chars`` characters of text at ``param`` are within ``max_chars``."""
        cap = self.settings.max_chars
        if chars > cap:
            raise limit_error(
                f"{param}: {chars} characters; this service accepts at most {cap} (max_chars)",
                param,
            )

    def _raise(self, found: SpecCheck, param: str) -> None:
        if found.depth > self.settings.max_depth:
            raise self._depth_error(found.depth, param)
        if found.violations:
            v = found.violations[0]
            if v.privilege == "client_code":
                self.check_isolation(v.param)
            raise privileged_error(v)
        for over in found.over_caps:
            name = over.param.rsplit(".", 1)[-1]
            raise limit_error(
                f"{over.param} = {over.value:g} is above this service's cap of {over.cap:g} "
                f"(resource_caps.{name})",
                over.param,
            )
        self._granted_client_code(found)

    def _granted_client_code(self, found: SpecCheck) -> None:
        """Granted client code still needs an isolating sandbox."""
        for param in found.granted_client_code:
            self.check_isolation(param)

    def _depth_error(self, depth: int, param: str) -> APIError:
        cap = self.settings.max_depth
        shown = f"{depth}" if depth <= cap + 1 else f"more than {cap}"
        return limit_error(
            f"{param}: the strategy nests {shown} levels deep; this service allows at most "
            f"{cap} (max_depth)",
            param,
        )

    # -- the built tree and the budget ---------------------------------------------------------

    def check_tree(self, strategy: Strategy, param: str = "strategy") -> None:
        """Nesting depth and the samples bound of a built strategy tree, before any call."""
        depth = tree_depth(strategy)
        if depth > self.settings.max_depth:
            raise self._depth_error(depth, param)
        bound, cap = strategy.max_samples(), self.settings.max_samples_per_run
        if bound is None:
            raise limit_error(
                f"{param}: strategy {strategy.name!r} (or a child) cannot bound the model "
                "samples it draws (Strategy.max_samples), so this service does not run it",
                param,
            )
        if bound > cap:
            raise limit_error(
                f"{param}: this spec may draw up to {bound} model samples per run (n x inner n "
                f"x ..., verifier calls included); this service allows {cap} "
                "(max_samples_per_run): lower n, n_max, k or the nesting",
                param,
            )

    def budget(self, requested: Budget | None) -> Budget | None:
        """The run's budget: ``requested`` (else ``default_budget``), capped by
        ``max_budget``."""
        return run_budget(requested, self.settings.default_budget, self.settings.max_budget)


def registered_config(kind: Nested, name: str) -> type[BaseModel] | None:
    """The config class of a registered strategy or verifier name (None otherwise)."""
    registry = strategies if kind == "strategy" else verifiers
    if name not in registry:
        return None
    config: type[BaseModel] = registry.get(name).Config
    return config


def public_spec(spec: Any, lookup: ConfigLookup = registered_config) -> Any:
    """``spec`` as clients see it (run records, chat responses, the strategy listing): its
    privileged values, the operator's URLs, paths and variable names, read ``<privileged>``."""
    return redacted("strategy", spec, lookup=lookup) if isinstance(spec, Mapping) else spec


def is_model_override(orch: Orchestrator, backend: str | None, model: str | None) -> bool:
    """Whether ``model`` is an override: given, and not the backend's configured model."""
    return model is not None and model != orch.resolve(backend).model
