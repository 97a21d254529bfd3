"""The layer rules that the linters cannot see: no function-local imports but for heavy optional
dependencies (each with its reason in a comment), and the CLI imported by nothing below it.

``make lint`` runs import-linter with the layer contracts of ``pyproject.toml``; these tests
guard the same rules from ``make test`` and pin the function-local import list, so a new one
(the usual way around an import cycle) fails here until it is justified.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "strategies", "verifiers", "search")

HEAVY = {
    "vllm": "the vLLM engine: optional (CPU or GPU extras), imported once an engine starts",
    "torch": "optional (the extras) and heavy: the engine's platform check, model conversion",
    "transformers": "optional (the CPU extras): the embedded model's one-time conversion",
    "matplotlib": "heavy (about a second): only the commands that draw plots",
    "math_verify": "pulls in sympy (about a second): only answers that need symbolic checks",
    "optuna.visualization": "imports matplotlib: only `ttc search report`",
}
"""Third-party modules that may be imported inside a function, and why."""


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement inside a function of ``path``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[int, str]] = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found += [(node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append((node.lineno, "." * node.level + (node.module or "")))
    return sorted(set(found))


def _production_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]


def _allowed(module: str) -> bool:
    return any(module == h or module.startswith(h + ".") for h in HEAVY)


def _commented(lines: list[str], lineno: int) -> bool:
    """A ``#`` comment on the import line or on one of the three lines above it."""
    return any("#" in lines[i] for i in range(max(0, lineno - 4), lineno))


def test_function_local_imports_are_only_heavy_optional_dependencies() -> None:
    bad = []
    for path in _production_files():
        lines = path.read_text().splitlines()
        for lineno, module in _function_imports(path):
            where = f"{path.relative_to(REPO)}:{lineno} imports {module}"
            if not _allowed(module):
                bad.append(f"{where}: not a heavy optional dependency (import it at the top)")
            elif not _commented(lines, lineno):
                bad.append(f"{where}: say in a comment why it is imported here")
    assert not bad, "\n".join(bad)


def test_the_scan_finds_a_function_local_import(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from orchestrator import cli\n    import os\n")
    assert _function_imports(sample) == [(2, "orchestrator"), (3, "os")]


def test_nothing_below_the_cli_imports_it() -> None:
    bad = []
    for path in _production_files():
        if (REPO / "orchestrator" / "cli") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            if any(n == "orchestrator.cli" or n.startswith("orchestrator.cli.") for n in names):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, f"imports of orchestrator.cli below the CLI: {bad}"


def test_import_linter_contracts_hold() -> None:
    """The layer, test-helper, SDK and acyclicity contracts of pyproject.toml."""
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(exe) if exe.exists() else "lint-imports"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
