"""The layer rules, read from every module's imports (statically, so a lazy or conditional
import counts too), and what importing the server actually loads.

    protocol/       imports nothing of airwave above it, and no trio, sockets or codec
    actors/core/    the pure core: protocol and itself only; no trio, no I/O
    actors/log/     format, recovery and replay are synchronous: no trio (writer may)
    actors/         never imports airwave's client modules (airwave/*.py)
    media/          never imports the server
    actors/cluster/ only bridge.py touches asyncio; nothing outside the package imports
                    nats; subjects.py and servers.py are pure; importing the server does
                    not load nats (cluster mode loads it on demand)
    airwave/*.py    the SDK keeps no copy of the server's role policy (the server says what
                    follows from it: participant_updated.in_view, replies)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Folder on disk -> the package it installs as (pyproject.toml's package-dir).
PACKAGES = {"protocol": "airwave.protocol", "actors": "airwave.actors", "media": "airwave.media", "airwave": "airwave"}
CLIENT_MODULES = {f"airwave.{p.stem}" for p in (ROOT / "airwave").glob("*.py") if p.stem != "__init__"}
IO_MODULES = {"trio", "trio_websocket", "socket", "av", "sounddevice", "subprocess", "asyncio", "nats"}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = [PACKAGES[relative.parts[0]], *relative.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved; ``from X import y`` counts
    both X and X.y (y may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, allowed: tuple[str, ...] = (), forbidden: tuple[str, ...] = ()) -> list[str]:
    """Imports of airwave modules outside ``allowed`` (if given) and of anything ``forbidden``."""
    bad = []
    for path in modules_under(folder):
        for imported in sorted(imports_of(path)):
            top = imported.split(".")[0]
            outside = allowed and imported.startswith("airwave") and not imported.startswith(allowed)
            if outside or top in forbidden or imported in forbidden or imported.startswith(tuple(f + "." for f in forbidden)):
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    return bad


def test_layers_protocol_imports_nothing_above_it_and_no_io() -> None:
    assert violations("protocol", allowed=("airwave.protocol",), forbidden=tuple(IO_MODULES)) == []


def test_layers_core_is_pure() -> None:
    forbidden = (*IO_MODULES, "os", "time", "random", "logging", "airwave.actors.log", "airwave.actors.net", "airwave.media")
    assert violations("actors/core", allowed=("airwave.protocol", "airwave.actors.core"), forbidden=forbidden) == []


@pytest.mark.parametrize("module", ["format", "recovery", "replay"])
def test_layers_log_reading_is_synchronous(module: str) -> None:
    path = ROOT / "actors" / "log" / f"{module}.py"
    assert not {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}


def test_layers_net_knows_nothing_of_channels() -> None:
    forbidden = ("airwave.actors.core", "airwave.actors.log", "airwave.media", *CLIENT_MODULES)
    assert violations("actors/net", forbidden=forbidden) == []


def test_layers_server_never_imports_the_client() -> None:
    assert violations("actors", forbidden=tuple(CLIENT_MODULES)) == []
    assert all("airwave" != m for path in modules_under("actors") for m in imports_of(path)), "airwave itself"


def test_layers_media_never_imports_the_server() -> None:
    assert violations("media", forbidden=("airwave.actors", *CLIENT_MODULES)) == []


def test_layers_asyncio_stays_behind_the_cluster_bridge() -> None:
    """nats-py is asyncio-only; one small module is the bridge, and only the cluster package
    speaks nats at all."""
    users = {
        path.relative_to(ROOT).as_posix()
        for folder in PACKAGES
        for path in modules_under(folder)
        if any(m.split(".")[0] == "asyncio" for m in imports_of(path))
    }
    assert users == {"actors/cluster/bridge.py"}
    outside = violations("actors", forbidden=("nats",))
    assert outside and all(v.startswith("actors/cluster/") for v in outside)
    for folder in ("protocol", "media", "airwave"):
        assert violations(folder, forbidden=("nats",)) == []


@pytest.mark.parametrize("module", ["subjects", "servers"])
def test_layers_cluster_names_are_pure(module: str) -> None:
    path = ROOT / "actors" / "cluster" / f"{module}.py"
    assert not {m for m in imports_of(path) if m.split(".")[0] in IO_MODULES}


def test_layers_sdk_holds_no_copy_of_the_role_policy() -> None:
    policy = ("airwave.protocol.DEFAULT_POLICY", "airwave.protocol.RolePolicy", "airwave.protocol.roles")
    client = [path.relative_to(ROOT).as_posix() for path in (ROOT / "airwave").glob("*.py")]
    found = [f"{path} imports {m}" for path in client for m in imports_of(ROOT / path) if m.startswith(policy)]
    assert found == []


def test_layers_checker_finds_real_imports() -> None:
    """The checker can fail: it sees imports that exist, relative ones resolved."""
    assert violations("media", forbidden=("airwave.protocol",))  # the router uses the frame layout
    assert violations("actors/log", forbidden=("airwave.actors.core",))  # recovery's `from ..core`
    assert violations("actors/core", allowed=("airwave.actors.core",))  # events use protocol enums


def test_importing_the_server_loads_neither_pyav_nor_the_client() -> None:
    script = "import sys, airwave.actors; print(sorted(m for m in sys.modules if m in {'av', 'numpy', 'sounddevice', 'nats'} or m in %r))"
    out = subprocess.run([sys.executable, "-c", script % sorted(CLIENT_MODULES)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
