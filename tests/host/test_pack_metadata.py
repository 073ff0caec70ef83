"""The pack's pyproject.toml as ComfyUI's own reader (comfy_config, used by its custom node loader) sees it."""
from __future__ import annotations

from host_setup import PACK_ROOT, require_host

require_host()

from comfy_config import config_parser  # noqa: E402


def test_comfyui_reads_the_registry_metadata():
    config = config_parser.extract_node_configuration(str(PACK_ROOT))
    project = config.project
    print(project, config.tool_comfy)
    assert project.name == "conceptprism"
    assert project.supported_comfyui_version == ">=0.3.64"
    # Its classifier checks drop the whole list when one entry is not one it knows.
    assert project.supported_os == ["OS Independent"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert config.tool_comfy.display_name == "ConceptPrism" and config.tool_comfy.icon == ""
