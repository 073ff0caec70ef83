"""The layout's one-way arrows, read from the source: nodes -> prism_core.host -> prism_core's algorithm.

prism_core's algorithm modules (everything in prism_core/ but host/) import only the standard library,
torch, safetensors, numpy and Pillow, so they are testable anywhere; only prism_core/host/ touches the
host (comfy, folder_paths, comfy_extras, server); nothing in prism_core imports nodes/.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALGORITHM = sorted((ROOT / "prism_core").glob("*.py"))
ADAPTERS = sorted((ROOT / "prism_core" / "host").glob("*.py"))
THIRD_PARTY_ALLOWED = {"torch", "safetensors", "numpy", "PIL"}
HOST_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "server", "execution", "nodes", "node_helpers"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, dotted module) for every import in the file; level 0 = absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [(node.level, f"{module}.{alias.name}".strip(".")) for alias in node.names] if node.level else [(0, module)]
    return found


def test_the_files_are_there():
    assert len(ALGORITHM) >= 10 and len(ADAPTERS) >= 8, (ALGORITHM, ADAPTERS)


@pytest.mark.parametrize("path", ALGORITHM, ids=lambda p: p.name)
def test_algorithm_modules_import_no_host(path):
    for level, module in imports(path):
        top = module.split(".")[0]
        if level == 0:
            assert top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED, f"{path.name} imports {module}"
        else:
            assert level == 1 and top != "host", f"{path.name} imports {'.' * level}{module}: the algorithm must not reach the host or nodes"


@pytest.mark.parametrize("path", ADAPTERS, ids=lambda p: p.name)
def test_adapters_never_import_nodes(path):
    for level, module in imports(path):
        if level >= 3 or (level == 2 and module.split(".")[0] == "nodes"):
            pytest.fail(f"host/{path.name} imports {'.' * level}{module}: arrows go nodes -> prism_core.host, never back")


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import comfy.model_management\nfrom .host import text\n")
    found = imports(bad)
    assert (0, "comfy.model_management") in found and (1, "host.text") in found
