"""The house's rules, read from the source: what each layer may import (ours and
third-party), and that importing anything connects to nothing. docs/architecture.md
draws the same house; a rule changed here is changed there."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
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

# Imports point inward. Each layer, and the only modules of ours it may import (the
# longest matching prefix decides; a module names itself by its own prefix).
BASE = ("etl.domain", "etl.formats", "etl.pipelines", "etl.config", "etl.logs", "etl.metrics")
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "etl.domain": ("etl.domain",),
    "etl.formats": ("etl.domain", "etl.formats"),
    "etl.pipelines": ("etl.domain", "etl.formats", "etl.pipelines"),
    "etl.config": ("etl.domain", "etl.config"),
    "etl.logs": ("etl.domain", "etl.logs"),
    "etl.metrics": ("etl.domain", "etl.pipelines", "etl.metrics"),
    # The service layer reaches its adapters only through its ports (etl.service.ports).
    "etl.service": (*BASE, "etl.service"),
    "etl.adapters": (*BASE, "etl.adapters"),
    # The composition roots: they build the adapters and hand them to the services.
    "etl.bootstrap": (*BASE, "etl.adapters", "etl.service", "etl.worker.app", "etl.bootstrap"),
    "etl.demo": (
        *BASE,
        "etl.adapters",
        "etl.service",
        "etl.worker.app",
        "etl.worker.embedded",
        "etl.bootstrap",
    ),
}

# Known debt, listed so it cannot grow: the dead-letter service drives the broker's
# dead-letter queues itself (drain, republish, signed bodies) and asks the adapters which
# failures are transient. A DeadLetterQueues port, built in etl.bootstrap, removes it.
LAYER_DEBT = {
    ("etl.service.dead_letters", "etl.adapters.dead_letter_queues"),
    ("etl.service.dead_letters", "etl.adapters.errors"),
    ("etl.service.dead_letters", "etl.adapters.topology"),
}

# Entry points (and the Celery app) never import what sits beside or above them.
FORBIDDEN = [
    ("etl.worker", ("api", "beat", "etl.cli", "etl.demo")),
    ("api", ("etl.worker.tasks", "etl.cli", "etl.demo", "beat")),
    ("beat", ("api", "etl.cli", "etl.demo", "etl.worker.tasks")),
    ("etl.cli", ("api", "beat", "etl.worker.tasks")),
]

ADAPTERS = ("etl.adapters",)
COMPOSITION_ROOT = ("etl.adapters", "etl.bootstrap")
ANYWHERE = ("etl", "api", "beat")
# Every third-party library the product imports, and where it may be imported: I/O
# clients in the adapters (and the composition root that builds them), Celery at the
# worker's edge, the web framework in the API. A new library needs a line here.
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    "sqlalchemy": COMPOSITION_ROOT,
    "psycopg2": ADAPTERS,
    "boto3": ADAPTERS,
    "botocore": ADAPTERS,
    "mypy_boto3_s3": ADAPTERS,
    "moto": ADAPTERS,
    "kombu": ADAPTERS,
    "amqp": ADAPTERS,
    "pika": ADAPTERS,
    "redis": ADAPTERS,
    "cryptography": ADAPTERS,
    "celery": ("etl.worker", "beat", "etl.logs", "etl.domain.schedules"),
    # Arrow is data, not I/O: anywhere but the domain.
    "pyarrow": ("etl.formats", "etl.pipelines", "etl.service", "etl.adapters", "etl.worker"),
    # The part encoders: JSON and gzip in C, for the formats alone.
    "orjson": ("etl.formats",),
    "zlib_ng": ("etl.formats",),
    "flask": ("api",),
    "werkzeug": ("api",),
    # The API's server: its access log's redaction (loaded by gunicorn's master), and
    # psycopg2 waiting as a greenlet in its gevent workers.
    "gunicorn": ("etl.access_log",),
    "gevent": ("etl.adapters.gevent_postgres",),
    "prometheus_client": ("etl.metrics", "api.metrics"),
    "pydantic": ANYWHERE,
    "pydantic_settings": ("etl.config",),
}
# The exceptions, each with its reason.
THIRD_PARTY_EXCEPTIONS = {
    # The dead-letter reader trusts exactly the certificates the workers trust, read by
    # the same code: Celery's certificate store.
    ("etl.adapters.dead_letter_queues", "celery"),
}
# The domain is pure: besides the libraries above, none of the standard library's I/O.
STDLIB_IO = (
    "asyncio", "ftplib", "http", "multiprocessing", "os", "select", "selectors", "shutil",
    "smtplib", "socket", "socketserver", "sqlite3", "ssl", "subprocess", "tempfile",
    "threading", "urllib.request",
)  # fmt: skip


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


@cache
def imported_names(module: str) -> frozenset[str]:
    """Every module an import statement anywhere in ``module`` names (inside functions and
    ``if TYPE_CHECKING:`` too; and, for ``from X import y``, also ``X.y``, which may be a
    submodule)."""
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
    return frozenset(names)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def within_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(within(name, prefix) for prefix in prefixes)


def ours(name: str) -> bool:
    return within_any(name, PACKAGES)


def third_party(name: str) -> str | None:
    """The top-level library ``name`` belongs to, if it is neither ours nor Python's."""
    top = name.split(".")[0]
    if not top or ours(name) or top in sys.stdlib_module_names or top == "__future__":
        return None
    return top


def explain(offending: dict[str, list[str]]) -> str:
    """One line per module that breaks a rule, naming what it imports (the shortest names)."""
    lines = []
    for module, names in sorted(offending.items()):
        shortest = [n for n in names if not any(within(n, o) and n != o for o in names)]
        lines.append(f"{module} imports {', '.join(shortest)}")
    return "\n".join(lines)


def layer_of(module: str) -> str | None:
    matches = [layer for layer in MAY_IMPORT if within(module, layer)]
    return max(matches, key=len) if matches else None


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
    assert third_party("sqlalchemy.exc") == "sqlalchemy"
    assert third_party("etl.adapters.s3") is None
    assert third_party("collections.abc") is None
    assert layer_of("etl.service.lifecycle") == "etl.service"
    assert layer_of("etl.domain.schedules") == "etl.domain"


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_what_lies_further_in(layer: str) -> None:
    members = [module for module in source_modules() if layer_of(module) == layer]
    assert members, f"no module is in {layer}"
    allowed = MAY_IMPORT[layer]
    offending = {
        module: sorted(
            name
            for name in imported_names(module)
            # ``from etl import metrics`` names the package too; its __init__ imports nothing.
            if ours(name)
            and name not in PACKAGES
            and not within_any(name, allowed)
            and not any(module == m and within(name, n) for m, n in LAYER_DEBT)
        )
        for module in members
    }
    broken = {module: names for module, names in offending.items() if names}
    assert broken == {}, explain(broken)


def test_the_known_debt_is_still_owed() -> None:
    # Paid off: take it off the list, so it cannot come back unnoticed.
    assert [
        (module, name)
        for module, name in sorted(LAYER_DEBT)
        if not any(within(imported, name) for imported in imported_names(module))
    ] == []


@pytest.mark.parametrize(("importers", "forbidden"), FORBIDDEN, ids=[rule[0] for rule in FORBIDDEN])
def test_entry_points_never_import_what_sits_beside_or_above_them(
    importers: str, forbidden: tuple[str, ...]
) -> None:
    offending = {
        module: sorted(name for name in imported_names(module) if within_any(name, forbidden))
        for module in source_modules()
        if within(module, importers)
    }
    assert offending, f"no module matched {importers}"
    broken = {module: names for module, names in offending.items() if names}
    assert broken == {}, explain(broken)


def test_every_third_party_library_the_product_imports_has_a_place() -> None:
    libraries = {
        library
        for module in source_modules()
        for name in imported_names(module)
        if (library := third_party(name)) is not None
    }
    assert libraries - set(THIRD_PARTY) == set()
    # A library no longer imported leaves the table too.
    assert set(THIRD_PARTY) - libraries <= {"pika", "amqp", "redis"}


@pytest.mark.parametrize("library", sorted(THIRD_PARTY))
def test_third_party_libraries_are_imported_only_where_they_belong(library: str) -> None:
    allowed = THIRD_PARTY[library]
    offending = sorted(
        module
        for module in source_modules()
        if any(third_party(name) == library for name in imported_names(module))
        and not within_any(module, allowed)
        and (module, library) not in THIRD_PARTY_EXCEPTIONS
    )
    assert offending == []


def test_the_domain_does_no_io() -> None:
    offending = {
        module: sorted(
            name
            for name in imported_names(module)
            if within_any(name, STDLIB_IO)
            or (third_party(name) is not None and not within(name, "celery.schedules"))
        )
        for module in source_modules()
        if within(module, "etl.domain")
    }
    broken = {module: names for module, names in offending.items() if names}
    assert broken == {}, explain(broken)


def test_what_the_product_depends_on_it_imports() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    dependencies = {re.split(r"[\[<>=]", spec)[0] for spec in project["dependencies"]}
    # pika publishes the tests' raw messages; the product never imports it.
    assert "pika" not in dependencies
    assert "pika" in {
        re.split(r"[\[<>=]", spec)[0] for spec in project["optional-dependencies"]["dev"]
    }


def modules_in_the_map() -> set[str]:
    """The files docs/architecture.md's map (the code block under "## Layout") names: a
    name at the margin is a path, an indented one is relative to the folder above it, and
    "a.py, b.py" names two files in one folder. Deeper lines carry descriptions over."""
    text = (PROJECT_ROOT / "docs" / "architecture.md").read_text()
    block = text.split("\n## Layout\n", 1)[1].split("```\n", 2)[1]
    folders: dict[int, str] = {}
    named = set()
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= 8:
            continue
        level = indent // 2
        names = re.split(r" {2,}", line.strip(), maxsplit=1)[0].split(", ")
        first = (folders[level - 1] if level else "") + names[0]
        if first.endswith("/"):
            folders[level] = first
            continue
        folder = first[: first.rfind("/") + 1]
        named.update(
            path for path in [first, *(folder + n for n in names[1:])] if path.endswith(".py")
        )
    return named


def test_the_architecture_map_names_every_module_and_no_other() -> None:
    modules = {str(path.relative_to(PROJECT_ROOT)) for path in source_modules().values()}
    in_the_map = modules_in_the_map()
    assert "etl/adapters/ledger/runs.py" in in_the_map  # the map is read
    assert {"missing from the map": sorted(modules - in_the_map)} == {"missing from the map": []}
    assert {"not in the code": sorted(in_the_map - modules)} == {"not in the code": []}


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
