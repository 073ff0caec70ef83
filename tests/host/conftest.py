"""Host-tier fixtures: tiny real models of each family, built once per session (when a host exists)."""
from __future__ import annotations

import pytest

import hostenv
from host_setup import find_host

# Only sys.path and the CPU flag here: whether the host imports is each module's require_host(), which
# skips (or, in CI, fails) that module alone, so a broken host never stops the core tier's collection.
if find_host() is not None:
    hostenv.import_host(find_host())

FAMILIES = ["sd15", "sd2v", "sdxl"]


@pytest.fixture(scope="session")
def embedding_root(tmp_path_factory):
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def tiny(embedding_root):
    """tiny(family) -> TinyModels, cached: building SDXL's real-width text encoders takes seconds.
    Their tokenizers read `embedding:` files from `embedding_root`."""
    if find_host() is None:
        pytest.skip("no host")
    import tiny_models
    cache = {}

    def get(family: str, seed: int = 0):
        if (family, seed) not in cache:
            cache[(family, seed)] = tiny_models.build(family, seed, embedding_directory=str(embedding_root))
        return cache[(family, seed)]
    return get


@pytest.fixture
def zimage(tiny):
    """The tiny Z-Image (tiny_models.build("zimage")), or a skip on releases without Z-Image (before 0.3.75)."""
    import comfy.supported_models
    if not hasattr(comfy.supported_models, "ZImage"):
        pytest.skip("this ComfyUI release has no Z-Image")
    return tiny("zimage")


@pytest.fixture
def folders(embedding_root, tmp_path, monkeypatch):
    """Point ComfyUI's embeddings folder at the tiny CLIPs' one, and the pack's token folder at a temp dir."""
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "embeddings", ([str(embedding_root)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "prism_tokens", ([str(tmp_path / "prism_tokens")], {".safetensors"}))
    return embedding_root


@pytest.fixture
def lora_dir(tmp_path, monkeypatch):
    """Point ComfyUI's loras folder at an empty temp dir (Save Prism LoRA, checkpoints, resume_from lists)."""
    import folder_paths
    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(folder)], {".safetensors"}))
    return folder
