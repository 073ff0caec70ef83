"""What ComfyUI-Manager learns about a pack by reading its source, as its node scanner does.

Manager's "Install Missing Custom Nodes" maps a shared workflow's node ids to packs through
extension-node-map.json, which its scanner (ComfyUI-Manager scanner.py: `extract_nodes`,
`scan_in_file`) builds without running any code: for every .py file of a pack's git checkout
(.git and __pycache__ skipped) it takes the string keys of a top-level NODE_CLASS_MAPPINGS dict
literal (ast), and, by regular expression, quoted keys inside any *_CLASS_MAPPINGS dict literal or
*_CLASS_MAPPINGS.update({...}) call, quoted subscripts of a *_CLASS_MAPPINGS, and register_node
decorators. The rules are restated here from that file (the oracle does not import the pack), and
this file is written so that they find nothing in it. Found must be exactly the pack's node ids: a
comprehension finds nothing, and a test-only node's mapping in the checkout would be advertised as
part of the pack.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

_LITERAL = re.compile(r"_CLASS_MAPPINGS\s*=\s*{([^}]*)}", re.MULTILINE | re.DOTALL)
_UPDATE = re.compile(r"_CLASS_MAPPINGS.update\s*\({([^}]*)}\)")
# Manager anchors these at the start of the file only; every line here, to catch any variant of it.
_SUBSCRIPTS = (re.compile(r'^[^=]*_CLASS_MAPPINGS\["(.*?)"\]', re.MULTILINE),
               re.compile(r"^[^=]*_CLASS_MAPPINGS\['(.*?)'\]", re.MULTILINE))
_REGISTER = re.compile(r'@register_node\("(.+)",\s*\".+"\)')
_PAIRS = (re.compile(r"\"([^\"]*)\"\s*:\s*([^,\n]*)"), re.compile(r"'([^']*)'\s*:\s*([^,\n]*)"))


def literal_mapping_keys(code: str) -> set[str]:
    """String keys of a top-level `NODE_CLASS_MAPPINGS = {...}` dict literal; empty for anything else."""
    for statement in ast.parse(code).body:
        if (isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name)
                and statement.targets[0].id == "NODE_CLASS_MAPPINGS"):
            value = statement.value
            if not isinstance(value, ast.Dict):
                return set()
            return {key.value.strip() for key in value.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
    return set()


def scan_file(code: str) -> set[str]:
    """The node ids the scanner's rules find in one file."""
    found = literal_mapping_keys(code)
    for pattern in _SUBSCRIPTS:
        found |= {key.strip() for key in pattern.findall(code)}
    found |= {key.strip() for key in _REGISTER.findall(code)}
    for body in _LITERAL.findall(code) + _UPDATE.findall(code):
        for pairs in _PAIRS:
            found |= {key.strip() for key, _ in pairs.findall(body)}
    return found


def scan_checkout(root: Path) -> dict[str, set[str]]:
    """{relative path: ids} for every .py file with a finding, as a git checkout of the pack holds it."""
    findings = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        # Hidden folders (.git, and the venvs .ci/run and developers make: .ci-work, .venv) are no part of
        # the pack a clone or the registry package holds.
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        ids = scan_file(path.read_text(encoding="utf-8"))
        if ids:
            findings[relative.as_posix()] = ids
    return findings
