"""What `comfy node pack` puts in the registry package, and the metadata the registry and ComfyUI read.

comfy-cli's pack (comfy_cli/registry `zip_files`) takes the git-tracked files and drops those that
match `.comfyignore` (gitignore syntax, via pathspec). The patterns here are all anchored names
("/tests/", "/.gitignore"), whose gitignore meaning is exact: a root folder and all below it, or a
root file. The oracle restates that; the test refuses any other pattern rather than guess at it.
"""
from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANCHORED = re.compile(r"^/[\w.-]+/?$")


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert all(ANCHORED.match(p) for p in patterns), f"only anchored names are emulated here: {patterns}"
    return patterns


def tracked_files() -> list[str]:
    """git ls-files, as comfy-cli lists them (plus files not yet committed, so a new file counts)."""
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return sorted({line for line in out.splitlines() if line and (ROOT / line).is_file()})


def packed(files: list[str], patterns: list[str]) -> list[str]:
    def ignored(path: str) -> bool:
        return any(path.startswith(p[1:]) if p.endswith("/") else path == p[1:] for p in patterns)
    return [f for f in files if not ignored(f)]


def test_the_package_holds_what_runs_in_comfyui_and_the_users_files_only():
    files = packed(tracked_files(), ignore_patterns())
    print(files)
    tops = {f.split("/")[0] for f in files}
    assert tops <= {"__init__.py", "nodes", "prism_core", "workflows", "locales", "docs", "README.md", "LICENSE",
                    "pyproject.toml", "requirements.txt", ".comfyignore"}, tops
    for needed in ("__init__.py", "nodes/__init__.py", "prism_core/host/__init__.py", "LICENSE", "README.md",
                   "pyproject.toml", "locales/en/main.json"):
        assert needed in files
    workflows = [f for f in files if f.startswith("workflows/")]
    stems = {Path(f).stem for f in workflows}
    assert len(stems) >= 4 and all(f"workflows/{s}.json" in files and f"workflows/{s}.jpg" in files for s in stems)
    # Nothing that ships imports what does not (tests, bench, eval).
    for f in files:
        if f.endswith(".py"):
            text = (ROOT / f).read_text()
            assert not re.search(r"^\s*(from|import)\s+(tests|bench|eval)\b", text, re.MULTILINE), f


def test_the_readmes_pictures_ship_with_it():
    files = set(packed(tracked_files(), ignore_patterns()))
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert pictures and all(p in files for p in pictures), (pictures, sorted(f for f in files if f.startswith("docs/")))


def test_registry_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    # Registry rules for the id: letters, digits, - _ . ; no leading digit or symbol; best practice: no "comfyui".
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert any(c.startswith("Environment :: GPU :: ") for c in project["classifiers"])
    # requires-comfyui is the oldest release CI runs (the last line of .ci/hosts), and the README names it.
    releases = [line.split()[0] for line in (ROOT / ".ci" / "hosts").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert comfy["requires-comfyui"] == f">={releases[-1]}", (comfy["requires-comfyui"], releases)
    tested = re.search(r"\*\*Tested with ComfyUI ([^*]+)\*\*", " ".join((ROOT / "README.md").read_text().split()))
    assert tested and all(r in tested.group(1) for r in releases), (tested, releases)
    assert comfy.get("Icon", "x") != "", "an empty Icon is worse than none"
    # The README's install lines, the harness's install folder and the template category use the id.
    readme = (ROOT / "README.md").read_text()
    assert f"comfy node install {project['name']}" in readme and f"git clone <this repository> {project['name']}" in readme
    harness = (ROOT / "tests" / "host" / "frontend" / "server.py").read_text()
    assert f'PACK_FOLDER = "{project["name"]}"' in harness
    assert project["name"] in (ROOT / "locales" / "en" / "main.json").read_text()
