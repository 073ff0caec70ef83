"""ComfyUI model folders the pack reads and writes."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..concept_input.concept_folder import typed_folder
from ..formats.files import split_prefix, unwritable_reason
from ..formats.lora_file import token_hash
from ..formats.names import file_prefix, prompt_word_prefix
from ..formats.token_bank import PrismTokens

TOKENS_FOLDER = "prism_tokens"


def register_folders() -> None:
    """Add models/prism_tokens (token banks) to the host's folder registry, once."""
    if TOKENS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[TOKENS_FOLDER] = (
            [os.path.join(folder_paths.models_dir, TOKENS_FOLDER)], {".safetensors"})


def first_folder(kind: str) -> Path:
    """The first configured folder of a model kind ('embeddings', 'loras', 'prism_tokens'), where saves go."""
    return Path(folder_paths.get_folder_paths(kind)[0])


def save_folder_problem(node: str, input_name: str, kind: str, prefix: str, for_prompt: bool = False) -> str | None:
    """None when `node` can write `<kind folder>/<prefix>_NNNNN_.safetensors`; else one message naming the
    folder, what stops the write and the fixes. Checked before any work (the save nodes' VALIDATE_INPUTS, the
    training node's checkpoint folder before step 1), so a run is never trained and then lost at its end.
    `prefix` is cleaned as the node cleans it (`names`, quietly: the node itself says when it renames);
    `for_prompt`: Save Prism Embedding's rule. Creates nothing."""
    root = first_folder(kind)
    cleaned = prompt_word_prefix(prefix) if for_prompt else file_prefix(prefix)
    try:
        directory, _ = split_prefix(root, cleaned)
    except ValueError:
        return (f"{node}: {input_name} '{prefix}' points outside the {kind} folder {root}; use a plain name or a "
                "subfolder such as 'conceptprism/concept'.")
    reason = unwritable_reason(directory)
    if reason is None:
        return None
    return (f"{node}: {input_name} '{prefix}' saves into {directory}, which cannot be written: {reason}. Fix the "
            f"folder (create it, or make it writable for the user ComfyUI runs as), point ComfyUI's '{kind}' folder "
            f"at a writable one (extra_model_paths.yaml), or change {input_name}.")


def validate_save_folder(node: str, input_name: str, kind: str, prefix: str | None,
                         for_prompt: bool = False) -> bool | str:
    """A node's VALIDATE_INPUTS answer for the folder `prefix` saves into: True, or `save_folder_problem`'s
    message. Run when the graph is validated, before any node runs, so training is not thrown away at the end;
    a prefix fed by a link arrives as None and is checked by `refuse_unwritable_folder` when the node runs."""
    if prefix is None:
        return True
    return save_folder_problem(node, input_name, kind, prefix, for_prompt) or True


def refuse_unwritable_folder(node: str, input_name: str, kind: str, prefix: str, for_prompt: bool = False) -> None:
    """Raise ValueError with `save_folder_problem`'s message when `prefix` cannot be written (before any work)."""
    problem = save_folder_problem(node, input_name, kind, prefix, for_prompt)
    if problem:
        raise ValueError(problem)


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
