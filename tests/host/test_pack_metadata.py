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
    oldest_in_ci = [line.split()[0] for line in (PACK_ROOT / ".ci" / "hosts").read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")][-1]
    assert project.supported_comfyui_version == f">={oldest_in_ci}"
    # Its classifier checks drop the whole list when one entry is not one it knows.
    assert project.supported_os == ["OS Independent"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert config.tool_comfy.display_name == "ConceptPrism" and config.tool_comfy.icon == ""
