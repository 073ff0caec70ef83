"""ComfyUI model folders the pack reads and writes."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

TOKENS_FOLDER = "prism_tokens"


def register_folders() -> None:
    """Add models/prism_tokens (token banks) to the host's folder registry, once."""
    if TOKENS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[TOKENS_FOLDER] = (
            [os.path.join(folder_paths.models_dir, TOKENS_FOLDER)], {".safetensors"})


def first_folder(kind: str) -> Path:
    """The first configured folder of a model kind ('embeddings', 'loras', 'prism_tokens'), where saves go."""
    return Path(folder_paths.get_folder_paths(kind)[0])


def resolve_input_folder(folder: str) -> Path:
    """An absolute path as given, or a path relative to ComfyUI's input directory."""
    path = Path(os.path.expanduser(folder.strip()))
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path
