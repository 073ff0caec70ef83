"""A real ComfyUI server on the CPU, in a throw-away base directory, with the pack and a test-only node.

Nothing is written into the pack's or the host's checkout: models, input, output, temp and user
folders live in the temporary base directory, the database is in memory, and Python writes no
bytecode. ``custom_nodes/`` there holds what ComfyUI's own loader finds: a link
``conceptprism`` -> this repository (the folder name a git clone from the README gets), and
``prism_test_nodes/``, a custom node written there at test time that registers the tiny checkpoint
and CLIP vision loaders of ``tiny_loader_node.py`` (never shipped, and no node mapping in the pack's checkout).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from hostenv import PACK_ROOT

PACK_FOLDER = "conceptprism"  # the README's install folder, the registry name, the template category
TEST_NODE_FOLDER = "prism_test_nodes"
TEST_LOADER = "PrismTestTinyCheckpointLoader"
TEST_VISION_LOADER = "PrismTestTinyCLIPVisionLoader"
# Single-output stock loaders (FLUX graphs load the parts separately) -> the test-only loader of that part.
TEST_PART_LOADERS = {"UNETLoader": "PrismTestTinyUNETLoader", "DualCLIPLoader": "PrismTestTinyDualCLIPLoader",
                     "CLIPLoader": "PrismTestTinyCLIPLoader", "VAELoader": "PrismTestTinyVAELoader"}
_TEST_NODE_SOURCE = Path(__file__).resolve().parent / "tiny_loader_node.py"
# The generated custom node: loads tiny_loader_node.py by path and exports its classes. The mapping
# is an attribute of that module, never a literal here (tests/core/test_manager_scan.py).
_TEST_NODE_INIT = '''"""Written by the ConceptPrism test harness (tests/host/frontend/server.py): test-only nodes."""
import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("prism_test_tiny_loader_node", {source!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)
NODE_CLASS_MAPPINGS = _module.NODE_CLASSES
NODE_DISPLAY_NAME_MAPPINGS = _module.DISPLAY_NAMES
'''

# Settings a user's fresh install would have, except that the first-run template browser is
# skipped and the minimap, the canvas statistics and the canvas toolbar hidden (they cover the graph
# in screenshots), and the checks the harness relies on are pinned on.
_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    "Comfy.Validation.Workflows": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # draw node text even at the zoom that fits a whole workflow
}


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path) -> Path:
    """Lay out a ComfyUI base directory: the pack's link, the test-only node, the default user's settings."""
    nodes = base / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    (nodes / PACK_FOLDER).symlink_to(PACK_ROOT, target_is_directory=True)
    (nodes / TEST_NODE_FOLDER).mkdir()
    (nodes / TEST_NODE_FOLDER / "__init__.py").write_text(_TEST_NODE_INIT.format(source=str(_TEST_NODE_SOURCE)))
    user = base / "user" / "default"
    user.mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text(json.dumps(_SETTINGS, indent=2))
    return base


@dataclass
class ComfyServer:
    """A running `main.py --cpu` and the HTTP calls the harness makes to it."""

    host_root: Path
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def start(self, timeout: float = 120.0) -> None:
        """Start the server and wait until it answers; raise with the log's tail if it does not."""
        # The database's default file is inside the host checkout (user/comfyui.db), hence in memory;
        # API nodes only call out to the network, hence off.
        command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
                   "--disable-auto-launch", "--disable-api-nodes"]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("w") as log:  # the child keeps its own copy of the file descriptor
            self.process = subprocess.Popen(command, cwd=self.host_root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop only the process this object started."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str, timeout: float = 30.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.load(response)

    def post(self, path: str, body: dict, timeout: float = 30.0) -> tuple[int, dict]:
        """POST JSON; return (status, JSON body) for errors too, since /prompt answers 400 with node_errors."""
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def loaded_from(self, folder: str) -> list[str]:
        """Node classes the host's loader registered from custom_nodes/<folder> (object_info's python_module)."""
        module = f"custom_nodes.{folder}"
        return sorted(name for name, info in self.get("/object_info").items() if info.get("python_module") == module)
