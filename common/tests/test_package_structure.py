"""The shape of the common package: no import cycle, and contracts that stand alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "ticketing_common"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The common modules ``path`` imports, at any depth of its code (a function-level import
    is still a dependency)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found & modules


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as the path that closes it), or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages re-export.
            if node != target.rsplit(".", 1)[0] and state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [node, target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_common_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "ticketing_common.errors" in graph
    assert find_cycle(graph) is None


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def _fresh_interpreter(code: str) -> str:
    """What ``code`` prints in a fresh interpreter: this one has long imported everything."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_event_contracts_import_pydantic_alone() -> None:
    probe = (
        "import sys, ticketing_common.events, ticketing_common.events.catalog;"
        "print([m for m in ('fastapi', 'sqlalchemy', 'starlette', 'nats') if m in sys.modules])"
    )
    assert _fresh_interpreter(probe) == "[]"


def test_a_service_imports_nothing_from_the_dev_tools() -> None:
    # nats-py imports aiohttp whenever it is installed: checkov, which depends on it, has an
    # environment of its own (tools/checkov/) so that no service carries it.
    probe = (
        "import sys, ticketing_common.app, ticketing_common.cli;"
        "print([m for m in ('aiohttp', 'checkov') if m in sys.modules])"
    )
    assert _fresh_interpreter(probe) == "[]"


def test_a_service_loads_neither_pydantics_v1_layer_nor_a_reloader() -> None:
    # FastAPI imports pydantic.v1 on every route only to refuse v1 models; uvicorn imports
    # watchfiles whenever it is installed (only the dev image has it: see the Dockerfile).
    probe = (
        "import sys; from fastapi import FastAPI; import ticketing_common.cli;"
        "from auth.app import create_app; from auth.settings import AuthSettings;"
        "app = create_app(AuthSettings(jwt_key='k' * 32));"
        "loaded = [m for m in ('pydantic.v1', 'watchfiles') if sys.modules.get(m)];"
        "print(len(app.routes) > 3, loaded)"
    )
    assert _fresh_interpreter(probe) == "True []"


def test_the_server_loads_no_websocket_protocol() -> None:
    probe = (
        "import sys; from fastapi import FastAPI;"
        "from ticketing_common.cli import make_server;"
        "from ticketing_common.settings import WebSettings;"
        "server = make_server(FastAPI(), WebSettings(jwt_key='k'), '127.0.0.1', 0);"
        "server.config.load();"
        "print(server.config.http_protocol_class is not None, 'websockets' in sys.modules)"
    )
    assert _fresh_interpreter(probe) == "True False"


def test_a_started_server_has_moved_start_up_out_of_the_garbage_collectors_reach() -> None:
    probe = (
        "import asyncio, gc; from fastapi import FastAPI;"
        "from ticketing_common.cli import YOUNG_GENERATION_THRESHOLD, make_server;"
        "from ticketing_common.settings import WebSettings\n"
        "async def started():\n"
        "    while not server.started: await asyncio.sleep(0.01)\n"
        "async def main():\n"
        "    serving = asyncio.create_task(server.serve())\n"
        "    await asyncio.wait_for(started(), 30)\n"
        "    young = gc.get_threshold()[0]\n"
        "    print(gc.get_freeze_count() > 0, young == YOUNG_GENERATION_THRESHOLD)\n"
        "    server.should_exit = True\n"
        "    await serving\n"
        "server = make_server(FastAPI(), WebSettings(jwt_key='k'), '127.0.0.1', 0)\n"
        "asyncio.run(main())"
    )
    assert _fresh_interpreter(probe) == "True True"
