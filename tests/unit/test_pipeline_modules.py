"""load_pipeline_modules: a deployment's own pipelines, from modules on the import path."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from etl.pipelines import PIPELINES, get_pipeline, load_pipeline_modules
from etl.pipelines.orders import ORDERS_DAILY

WriteModule = Callable[[str], str]


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteModule]:
    """Writes a module of its own name on the import path; afterwards the registry and
    sys.modules are as they were, so no other test sees what a test registered."""
    monkeypatch.syspath_prepend(str(tmp_path))
    registered = dict(PIPELINES)
    written: list[str] = []

    def write(source: str) -> str:
        name = f"extra_pipelines_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    PIPELINES.clear()
    PIPELINES.update(registered)
    for name in written:
        sys.modules.pop(name, None)


ONE_COPY = """
    import dataclasses

    from etl.pipelines.orders import ORDERS_DAILY

    PIPELINES = [dataclasses.replace(ORDERS_DAILY, name="orders_copy")]
"""


def test_a_modules_pipelines_are_registered_and_their_names_returned(
    write_module: WriteModule,
) -> None:
    module = write_module(ONE_COPY)

    added = load_pipeline_modules(module)

    assert added == ["orders_copy"]
    copy = get_pipeline("orders_copy")
    assert copy is sys.modules[module].PIPELINES[0]
    assert copy.source == ORDERS_DAILY.source
    assert get_pipeline("orders_daily") is ORDERS_DAILY


def test_loading_the_same_module_twice_is_harmless(write_module: WriteModule) -> None:
    module = write_module(ONE_COPY)
    load_pipeline_modules(module)
    first = get_pipeline("orders_copy")
    # Other suites in the same process may have registered pipelines of their own.
    registered = sorted(PIPELINES)

    assert load_pipeline_modules(module) == ["orders_copy"]

    assert get_pipeline("orders_copy") is first
    assert sorted(PIPELINES) == registered


def test_several_comma_separated_modules_are_loaded_ignoring_blanks(
    write_module: WriteModule,
) -> None:
    first = write_module(ONE_COPY)
    second = write_module(
        """
        import dataclasses

        from etl.pipelines.orders import ORDERS_DAILY

        PIPELINES = (
            dataclasses.replace(ORDERS_DAILY, name="orders_a"),
            dataclasses.replace(ORDERS_DAILY, name="orders_b"),
        )
        """
    )

    added = load_pipeline_modules(f" {first} , , {second},")

    assert added == ["orders_copy", "orders_a", "orders_b"]
    assert {"orders_copy", "orders_a", "orders_b"} <= set(PIPELINES)


@pytest.mark.parametrize("body", ["PIPELINE = []\n", "PIPELINES = None\n", "PIPELINES = {}\n"])
def test_a_module_without_a_pipelines_list_is_refused_naming_it(
    write_module: WriteModule, body: str
) -> None:
    module = write_module(body)
    before = dict(PIPELINES)

    with pytest.raises(ValueError, match=f"pipeline module {module} has no PIPELINES list"):
        load_pipeline_modules(module)

    assert before == PIPELINES


def test_a_module_that_redefines_a_registered_pipeline_is_refused(
    write_module: WriteModule,
) -> None:
    module = write_module(
        """
        import dataclasses

        from etl.pipelines.orders import ORDERS_DAILY

        PIPELINES = [dataclasses.replace(ORDERS_DAILY, chunk_size=7)]
        """
    )

    with pytest.raises(ValueError) as caught:
        load_pipeline_modules(module)

    assert "'orders_daily'" in str(caught.value)
    assert module in str(caught.value)
    assert "already registered" in str(caught.value)
    assert get_pipeline("orders_daily") is ORDERS_DAILY


def test_a_module_that_lists_the_registered_pipeline_itself_is_accepted(
    write_module: WriteModule,
) -> None:
    module = write_module(
        """
        from etl.pipelines.orders import ORDERS_DAILY

        PIPELINES = [ORDERS_DAILY]
        """
    )

    assert load_pipeline_modules(module) == ["orders_daily"]
    assert get_pipeline("orders_daily") is ORDERS_DAILY


@pytest.mark.parametrize("modules", ["", " ", ",", " , ,"])
def test_no_modules_load_nothing(modules: str) -> None:
    before = dict(PIPELINES)
    assert load_pipeline_modules(modules) == []
    assert before == PIPELINES


def test_a_module_that_cannot_be_imported_fails_at_load_time(write_module: WriteModule) -> None:
    missing = f"no_such_pipelines_{uuid.uuid4().hex}"
    with pytest.raises(ModuleNotFoundError, match=missing):
        load_pipeline_modules(missing)
