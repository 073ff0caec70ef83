"""ComfyUI-Manager's source scan of this checkout finds exactly the pack's node ids (tests/manager_scan.py)."""
from __future__ import annotations

import ast
from pathlib import Path

from manager_scan import literal_mapping_keys, scan_checkout

ROOT = Path(__file__).resolve().parents[2]


def test_the_scan_finds_exactly_the_packs_literal_mapping():
    pack_ids = literal_mapping_keys((ROOT / "nodes" / "__init__.py").read_text())
    assert len(pack_ids) == 11 and all(name.startswith("ConceptPrism") for name in pack_ids), pack_ids
    findings = scan_checkout(ROOT)
    print({path: sorted(ids) for path, ids in findings.items()})
    assert set().union(*findings.values()) == pack_ids, findings
    assert set(findings) == {"nodes/__init__.py"}, f"node ids found outside the pack's mapping: {findings}"


def test_the_display_names_cover_the_same_ids():
    tree = ast.parse((ROOT / "nodes" / "__init__.py").read_text())
    names = {s.targets[0].id: s.value for s in tree.body if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)}
    display = names["NODE_DISPLAY_NAME_MAPPINGS"]
    assert isinstance(display, ast.Dict)
    assert {k.value for k in display.keys} == literal_mapping_keys((ROOT / "nodes" / "__init__.py").read_text())


def test_the_scan_can_fail(tmp_path):
    # The pack's old layout: a comprehension (found: nothing) and a test-only node's literal (found).
    name = "NODE_CLASS" + "_MAPPINGS"  # split, so that this file itself holds no mapping to find
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "__init__.py").write_text(name + ' = {f"ConceptPrism{c.__name__}": c for c in _NODES}\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "loader.py").write_text(
        f'x = 1\n{name} = {{"PrismTestLoader": Loader}}\nhost.{name}["PrismTestCapture"] = C\n')
    findings = scan_checkout(tmp_path)
    assert findings == {"tests/loader.py": {"PrismTestLoader", "PrismTestCapture"}}
