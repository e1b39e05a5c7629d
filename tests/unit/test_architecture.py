"""docs/architecture.md's layer table cannot drift: it must match the import-linter layers
contract in pyproject.toml and the real import graph (grimp, the graph import-linter builds)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def table() -> list[tuple[int, str, set[str]]]:
    """(layer, module, imports) per row of the layer table."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            imports = {x.strip() for x in cells[3].split(",") if x.strip()}
            rows.append((int(cells[0]), cells[1].strip("`"), imports))
    assert rows, "no layer table in docs/architecture.md"
    return rows


def contract_layers() -> dict[str, int]:
    """Module -> 1-based layer index in the import-linter layers contract."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in conf["contracts"] if c["type"] == "layers"]
    out = {}
    for n, layer in enumerate(layers["layers"], 1):
        for name in re.split(r"[|:]", layer):
            out[name.strip().strip("()")] = n
    return out


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("meshd", cache_dir=None)


def imports_of(graph: grimp.ImportGraph, top: str) -> set[str]:
    """What ``meshd.<top>`` (and everything in it) imports of the rest of meshd, as
    ``package.module`` (the package root itself, for ``__version__``, is left out)."""
    full = f"meshd.{top}"
    mods = {full} | graph.find_descendants(full) if graph.find_children(full) else {full}
    out = set()
    for m in mods:
        for i in graph.find_modules_directly_imported_by(m):
            if i.startswith("meshd.") and i != full and not i.startswith(full + "."):
                out.add(".".join(i.split(".")[1:3]))
    return out


def test_every_module_has_one_row() -> None:
    names = [name for _, name, _ in table()]
    assert len(names) == len(set(names)), "a module has two rows"
    pkg = ROOT / "meshd"
    actual = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in pkg.iterdir() if (p / "__init__.py").exists()
    }
    assert set(names) == actual


def test_rows_sit_in_the_contracts_layer() -> None:
    layers = contract_layers()
    for layer, name, _ in table():
        assert layers.get(name) == layer, f"{name}: layer {layer}, contract {layers.get(name)}"


def test_imports_column_is_the_real_import_graph(graph: grimp.ImportGraph) -> None:
    for _, name, listed in table():
        actual = imports_of(graph, name)
        for entry in listed:
            assert any(a == entry or a.split(".")[0] == entry for a in actual), (
                f"{name}: the table lists {entry}, which it does not import"
            )
        for a in actual:
            top = a.split(".")[0]
            assert top in listed or a in listed, f"{name} imports {a}; the table does not say so"
