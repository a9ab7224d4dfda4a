from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("etl", "api", "beat")
CLOSED_PORT_ENV = {
    "ETL_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
    "ETL_RESULT_BACKEND": "redis://127.0.0.1:1/0",
    "ETL_DATABASE_URL": "postgresql+psycopg2://postgres@127.0.0.1:1/postgres",
    "ETL_S3_ENDPOINT_URL": "http://127.0.0.1:1",
}

# (importers, what they must never import): the inward-pointing rules of DESIGN.md.
FORBIDDEN = [
    (
        "etl.adapters",
        (
            "etl.worker",
            "etl.cli",
            "etl.service",
            "etl.bootstrap",
            "etl.demo",
            "api",
            "beat",
        ),
    ),
    ("api", ("etl.worker.tasks", "etl.cli", "beat")),
    ("beat", ("api", "etl.cli", "etl.worker.tasks")),
    ("etl.cli", ("api", "beat", "etl.worker.tasks")),
    ("etl.worker.tasks", ("api", "beat", "etl.cli")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
    }


def imported_names(module: str) -> set[str]:
    """Every module an import statement anywhere in ``module`` names (and, for ``from X
    import y``, also ``X.y``, which may be a submodule)."""
    path = source_modules()[module]
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def ours(name: str) -> bool:
    return any(within(name, package) for package in PACKAGES)


def test_the_source_tree_is_found_and_imports_are_read() -> None:
    modules = source_modules()
    assert {
        "etl.domain.chunks",
        "etl.worker.tasks",
        "etl.cli",
        "api",
        "api.runs",
        "beat.schedule",
    } <= set(modules)
    assert "etl.service.execution" in imported_names("etl.worker.tasks")
    cli_imports = set().union(*(imported_names(m) for m in modules if within(m, "etl.cli")))
    assert "etl.worker.app.make_celery" in cli_imports  # imported inside a function


def test_the_domain_imports_nothing_of_ours_but_the_domain() -> None:
    offending = {
        module: sorted(
            name for name in imported_names(module) if ours(name) and not within(name, "etl.domain")
        )
        for module in source_modules()
        if within(module, "etl.domain")
    }
    assert {module: names for module, names in offending.items() if names} == {}


@pytest.mark.parametrize(("importers", "forbidden"), FORBIDDEN, ids=[rule[0] for rule in FORBIDDEN])
def test_entry_points_and_adapters_never_import_what_sits_beside_or_above_them(
    importers: str, forbidden: tuple[str, ...]
) -> None:
    offending = {
        module: sorted(
            name for name in imported_names(module) if any(within(name, f) for f in forbidden)
        )
        for module in source_modules()
        if within(module, importers)
    }
    assert offending, f"no module matched {importers}"
    assert {module: names for module, names in offending.items() if names} == {}


# A fresh interpreter with connecting refused outright: any socket connect() made while
# importing is recorded, so "nothing connects at import time" is checked, not timed.
# (libpq connects from C, past this hook; the database URL at a closed port would make
# such an import fail instead.)
_IMPORT_PROBE = """
import importlib, json, socket, sys
attempts = []
def refuse(self, address, *args):
    attempts.append(repr(address))
    raise ConnectionRefusedError("unit test: no connections at import time")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("etl", "api", "beat"))
print(json.dumps({"attempts": attempts, "loaded": ours}))
"""


ENTRY_POINTS = {
    "api": ("etl.worker.tasks", "etl.cli", "beat"),
    "beat.schedule": ("api", "etl.cli", "etl.worker.tasks"),
    "etl.cli": ("api", "beat", "etl.worker.tasks"),
}


def importable_modules() -> list[str]:
    # __main__ modules run their command when imported; they are entry scripts.
    return [name for name in source_modules() if not name.endswith("__main__")]


@pytest.fixture(scope="module")
def probes() -> dict[str, dict[str, list[str]]]:
    """Each probe's result, keyed by what it imported ("*" for every module); the
    interpreters run side by side."""
    wanted = {"*": importable_modules(), **{entry: [entry] for entry in ENTRY_POINTS}}
    running = {
        key: subprocess.Popen(
            [sys.executable, "-c", _IMPORT_PROBE, json.dumps(modules)],
            cwd=PROJECT_ROOT,
            env={**os.environ, **CLOSED_PORT_ENV, "PYTHONPATH": str(PROJECT_ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key, modules in wanted.items()
    }
    results = {}
    for key, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"importing {key}: {err}"
        results[key] = json.loads(out.splitlines()[-1])
    return results


def test_every_module_imports_without_connecting_to_anything(
    probes: dict[str, dict[str, list[str]]],
) -> None:
    assert probes["*"]["attempts"] == []
    assert set(importable_modules()) <= set(probes["*"]["loaded"])


@pytest.mark.parametrize("entry_point", sorted(ENTRY_POINTS))
def test_importing_an_entry_point_loads_no_other_entry_point(
    probes: dict[str, dict[str, list[str]]], entry_point: str
) -> None:
    loaded = probes[entry_point]["loaded"]
    assert entry_point in loaded
    never = ENTRY_POINTS[entry_point]
    assert [name for name in loaded if any(within(name, n) for n in never)] == []
    assert probes[entry_point]["attempts"] == []
