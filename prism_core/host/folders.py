"""ComfyUI model folders the pack reads and writes."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..concept_folder import typed_folder
from ..lora_file import token_hash
from ..token_bank import PrismTokens

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
    """An absolute path as given, or a path relative to ComfyUI's input directory (see `typed_folder`)."""
    path = Path(os.path.expanduser(typed_folder(folder)))
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path


def token_banks_with_hash(sha256: str) -> list[str]:
    """Names (as Load Prism Tokens lists them) of the saved token banks whose vectors hash to `sha256`."""
    found = []
    if TOKENS_FOLDER not in folder_paths.folder_names_and_paths:
        return found  # the pack's folder is not registered (the pack was imported without its __init__)
    for name in folder_paths.get_filename_list(TOKENS_FOLDER):
        try:
            if token_hash(PrismTokens.load(Path(folder_paths.get_full_path_or_raise(TOKENS_FOLDER, name)))) == sha256:
                found.append(name)
        except Exception:  # noqa: BLE001 - a file that does not read as a token bank cannot be the one to connect
            continue
    return found
