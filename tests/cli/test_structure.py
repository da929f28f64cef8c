"""How the command line is put together: one module per command over shared modules, no import
cycle, and the search options' defaults and help taken from SearchSettings' fields."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest

import image2prompt.cli
from image2prompt.cli.main import cli
from image2prompt.settings import SearchSettings

CLI_DIR = Path(image2prompt.cli.__file__).parent
COMMANDS = {"run", "batch", "analyze", "models", "cache", "serve", "report"}
SHARED = {"app", "options", "progress"}


def cli_imports() -> dict[str, set[str]]:
    """Each module of image2prompt.cli -> the modules of image2prompt.cli it imports (relative imports)."""
    graph: dict[str, set[str]] = {}
    for path in CLI_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(
                    "image2prompt.cli."):
                found.add((node.module or "").split(".")[2])
        graph[path.stem] = found
    return graph


def test_one_module_per_command_each_well_under_500_lines() -> None:
    graph = cli_imports()
    assert COMMANDS | SHARED | {"main", "__init__"} <= set(graph)
    for path in CLI_DIR.glob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines < 400, f"{path.name}: {lines} lines"


def test_no_import_cycle_between_cli_modules() -> None:
    graph = cli_imports()
    for name in COMMANDS:  # a command imports only the shared modules, never another command or main
        assert graph[name] <= SHARED, f"{name} imports {graph[name] - SHARED}"
    assert graph["app"] <= {"progress"} and graph["options"] <= {"app", "progress"}
    assert not any("main" in deps for name, deps in graph.items() if name not in ("__init__", "main"))

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        for dep in graph.get(node, ()):
            visit(dep, (*path, node))

    for name in graph:
        visit(name, ())


def test_the_group_holds_every_command() -> None:
    assert set(cli.commands) == COMMANDS


FIELDS = {f.name: f for f in dataclasses.fields(SearchSettings)}


@pytest.mark.parametrize("command", ["run", "batch"])
def test_search_options_take_their_defaults_and_help_from_search_settings(command: str) -> None:
    params = {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}
    for option, field in [("mode", "mode"), ("beam", "beam"), ("max_tokens", "max_tokens"),
                          ("candidates", "candidates")]:
        assert params[option].default == FIELDS[field].default, option
    assert params["flavors"].default == f"{FIELDS['min_flavors'].default},{FIELDS['max_flavors'].default}"
    assert params["floor"].default == f"{FIELDS['floor'].default:g}"
    for option, field in [("mode", "mode"), ("with_negative", "negative"), ("max_tokens", "max_tokens"),
                          ("chunks", "chunks"), ("candidates", "candidates")]:
        assert params[option].help == FIELDS[field].metadata["help"], option
    assert params["floor"].help == FIELDS["floor"].metadata["help"] + " Phrases it keeps out are listed in --format json."


def test_a_single_flavors_number_caps_the_settings_min_flavors() -> None:
    from image2prompt.cli.options import _flavors_callback

    assert _flavors_callback("4") == (4, 4)
    assert _flavors_callback("40") == (FIELDS["min_flavors"].default, 40)
    with pytest.raises(click.BadParameter):
        _flavors_callback("9,3")
