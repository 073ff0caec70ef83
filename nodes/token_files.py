"""Saving and loading learned tokens: a ComfyUI embedding, or the whole token bank."""
from __future__ import annotations

from pathlib import Path

import folder_paths

from ..prism_core.formats.files import save_new_safetensors
from ..prism_core.formats.names import checked_prefix
from ..prism_core.formats.token_bank import PrismTokens
from ..prism_core.host.folders import TOKENS_FOLDER, first_folder, refuse_unwritable_folder, validate_save_folder
from .types import CATEGORY, PRISM_TOKENS


def _name_in(root: Path, path: Path) -> str:
    # Saves resolve the folder (a models folder is often a symlink), so the name is taken against the resolved one.
    return path.relative_to(root.resolve()).as_posix()


class SavePrismEmbedding:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt_word",)
    OUTPUT_TOOLTIPS = ("The word to put in any prompt, e.g. 'embedding:conceptprism/concept_00001_'.",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = ("Saves the target token into the embeddings folder so 'embedding:<name>' works in a plain CLIP Text Encode "
                   "(Z-Image: only where the release's Z-Image tokenizer reads embeddings, and less exactly than Prism "
                   "Conditioning, which keeps its chat template).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": (PRISM_TOKENS, {"tooltip": "The learned tokens; only the target token is saved (residual tokens describe the training images, not the concept)."}),
            "filename_prefix": ("STRING", {"default": "conceptprism/concept", "tooltip": "Name (and optional subfolder) inside models/embeddings. A counter is appended; existing files are never overwritten. Spaces, brackets and < > : \" | ? * cannot be in a prompt word: each run of them becomes '_' (the console says so)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        return validate_save_folder("Save Prism Embedding", "filename_prefix", "embeddings", filename_prefix, for_prompt=True)

    def save(self, tokens: PrismTokens, filename_prefix: str):
        refuse_unwritable_folder("Save Prism Embedding", "filename_prefix", "embeddings", filename_prefix, for_prompt=True)
        root = first_folder("embeddings")
        prefix = checked_prefix("filename_prefix", filename_prefix, for_prompt=True)
        path = save_new_safetensors(root, prefix, tokens.embedding_tensors(),
                                    {"conceptprism.text_encoders": tokens.family})
        word = "embedding:" + _name_in(root, path.with_suffix(""))
        return {"ui": {"text": [word]}, "result": (word,)}


class SavePrismTokens:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("token_file",)
    OUTPUT_TOOLTIPS = ("The saved file's name in models/prism_tokens, as Load Prism Tokens lists it.",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = "Saves the whole token bank (target, residuals, captions, settings, loss history) to models/prism_tokens."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": (PRISM_TOKENS, {"tooltip": "The learned tokens to keep."}),
            "filename_prefix": ("STRING", {"default": "conceptprism/concept", "tooltip": "Name (and optional subfolder) inside models/prism_tokens. A counter is appended; existing files are never overwritten. < > : \" | ? * become '_'."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        return validate_save_folder("Save Prism Tokens", "filename_prefix", TOKENS_FOLDER, filename_prefix)

    def save(self, tokens: PrismTokens, filename_prefix: str):
        refuse_unwritable_folder("Save Prism Tokens", "filename_prefix", TOKENS_FOLDER, filename_prefix)
        root = first_folder(TOKENS_FOLDER)
        name = _name_in(root, tokens.save(root, checked_prefix("filename_prefix", filename_prefix)))
        return {"ui": {"text": [name]}, "result": (name,)}


class LoadPrismTokens:
    CATEGORY = CATEGORY
    RETURN_TYPES = (PRISM_TOKENS,)
    RETURN_NAMES = ("tokens",)
    OUTPUT_TOOLTIPS = ("The saved token bank, as Optimize Prism Tokens returned it.",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a token bank saved by Save Prism Tokens."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "token_file": (folder_paths.get_filename_list(TOKENS_FOLDER), {"tooltip": "A file in models/prism_tokens."}),
        }}

    def load(self, token_file: str):
        return (PrismTokens.load(Path(folder_paths.get_full_path_or_raise(TOKENS_FOLDER, token_file)), token_file),)
