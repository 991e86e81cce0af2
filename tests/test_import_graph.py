"""The import graph of our packages has no cycles (imports inside functions count; only those
under `if TYPE_CHECKING:` are exempt) and keeps its layers: analysis imports nothing of ours,
detectors nothing of the search layers, search_spaces nothing of nas. No allow-list.

Read with `ast` (tests/_import_graph.py), so nothing here imports the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from _import_graph import cycle_path, cycles, describe, import_graph, module_files

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "search_spaces", "detectors", "analysis", "experiments")


class _Graph(dict):
    """The graph, with a short repr: pytest prints fixture values in a failure report."""

    def __repr__(self) -> str:
        return f"<import graph of {len(self)} modules>"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _Graph(import_graph(REPO, PACKAGES))


def test_every_package_is_read(graph):
    # guards the test against reading nothing (a moved root, a renamed package)
    for package in PACKAGES:
        assert package in graph, package
    assert "detectors.spec" in graph and "nas.cli" in graph
    assert "detectors.errors" in graph["detectors.spec"]


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join("  " + describe(graph, c) for c in found)


# Each layer may import only itself and the layers listed; experiments/ holds data paths only,
# so any layer may read it and it reads nothing.
LAYERS = {
    "experiments": {"experiments"},
    "analysis": {"analysis"},
    "detectors": {"detectors", "experiments"},
    "search_spaces": {"search_spaces", "detectors", "experiments"},
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_below_themselves(graph, layer):
    allowed = LAYERS[layer]
    bad = sorted(f"{module} -> {target}" for module, targets in graph.items()
                 if module.split(".")[0] == layer
                 for target in targets if target.split(".")[0] not in allowed)
    assert not bad, f"{layer} imports outside {sorted(allowed)}:\n  " + "\n  ".join(bad)


# --- the finder itself, on tiny synthetic packages ---------------------------------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    _write(tmp_path, {
        "p/__init__.py": "",
        "p/a.py": "from p import b\n",
        "p/b.py": "def f():\n    from p.c import g\n    return g\n",
        "p/c.py": "class K:\n    def m(self):\n        import p.a\n",
        "p/d.py": "import p.a\n",  # reaches the cycle but is not on it
    })
    g = import_graph(tmp_path, ("p",))
    assert cycles(g) == [["p.a", "p.b", "p.c"]]
    assert cycle_path(g, ["p.a", "p.b", "p.c"]) == ["p.a", "p.b", "p.c", "p.a"]
    assert "3 modules: p.a, p.b, p.c; e.g. p.a -> p.b -> p.c -> p.a" == describe(g, cycles(g)[0])


def test_imports_under_type_checking_are_exempt(tmp_path):
    _write(tmp_path, {
        "p/__init__.py": "",
        "p/a.py": "import p.b\n",
        "p/b.py": ("from typing import TYPE_CHECKING\nimport typing\n"
                   "if TYPE_CHECKING:\n    from p.a import X\n"
                   "if typing.TYPE_CHECKING:\n    import p.a\n"
                   "def f():\n    if TYPE_CHECKING:\n        from p import a\n"),
    })
    g = import_graph(tmp_path, ("p",))
    assert g["p.b"] == set() and cycles(g) == []
    # ... but the else branch runs, and a different condition is no exemption
    _write(tmp_path, {"p/b.py": "if TYPE_CHECKING:\n    pass\nelse:\n    import p.a\n"})
    assert cycles(import_graph(tmp_path, ("p",))) == [["p.a", "p.b"]]
    _write(tmp_path, {"p/b.py": "if DEBUG:\n    import p.a\n"})
    assert cycles(import_graph(tmp_path, ("p",))) == [["p.a", "p.b"]]


def test_relative_imports_resolve(tmp_path):
    _write(tmp_path, {
        "p/__init__.py": "from .sub import x\n",
        "p/top.py": "from . import sub\nfrom .sub.x import K\n",
        "p/sub/__init__.py": "from . import x\nfrom .. import top\n",
        "p/sub/x.py": "from ..top import T\nfrom .y import Y\nfrom . import y\n",
        "p/sub/y.py": "from ...q import Z\n",  # beyond p: resolves to q, not ours
    })
    g = import_graph(tmp_path, ("p",))
    assert g["p"] == {"p.sub.x"}
    assert g["p.top"] == {"p.sub", "p.sub.x"}
    assert g["p.sub"] == {"p.sub.x", "p.top"}
    assert g["p.sub.x"] == {"p.top", "p.sub.y"}
    assert g["p.sub.y"] == set()
    assert cycles(g) == [["p.sub", "p.sub.x", "p.top"]]


def test_from_package_import_submodule_or_attribute(tmp_path):
    _write(tmp_path, {
        "p/__init__.py": "VALUE = 1\n",
        "p/m.py": "",
        "p/user.py": "from p import m, VALUE\nimport p.m as alias\n",
        "p/other.py": "from p import VALUE\n",
    })
    g = import_graph(tmp_path, ("p",))
    assert g["p.user"] == {"p.m", "p"}
    assert g["p.other"] == {"p"}
    # importing a submodule adds no implied edge to its package: p.m alone does not reach p
    assert g["p.m"] == set()
    assert set(module_files(tmp_path, ("p",))) == {"p", "p.m", "p.user", "p.other"}


def test_a_package_importing_its_submodule_is_no_cycle_by_itself(tmp_path):
    # the usual `__init__` re-export: p -> p.m, and p.m reads p's siblings only
    _write(tmp_path, {"p/__init__.py": "from p.m import f\n", "p/m.py": "from p.n import g\n",
                      "p/n.py": ""})
    assert cycles(import_graph(tmp_path, ("p",))) == []
    _write(tmp_path, {"p/n.py": "from p import f\n"})  # now p.n reads the package back
    assert cycles(import_graph(tmp_path, ("p",))) == [["p", "p.m", "p.n"]]
