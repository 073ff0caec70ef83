"""SavePrismLoRA: the Stage 2 LoRA into models/loras, for LoraLoader and other tools."""
from __future__ import annotations

from ..prism_core.formats.lora_file import SAVE_DTYPES, save_lora
from ..prism_core.formats.names import checked_prefix
from ..prism_core.host.folders import first_folder, refuse_unwritable_folder, validate_save_folder
from .types import CATEGORY, LORA_MODEL

NODE = "Save Prism LoRA"


class SavePrismLoRA:
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name in models/loras, as LoraLoader lists it.",)
    FUNCTION = "save"
    OUTPUT_NODE = True
    DESCRIPTION = ("Saves the LoRA into models/loras in the kohya layout (LoraLoader, LoraLoaderModelOnly and other tools "
                   "read it), with the base family, rank, alpha, steps, loss curve and token bank in the file header.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": (LORA_MODEL, {"tooltip": "From Prism LoRA Train."}),
            "filename_prefix": ("STRING", {"default": "conceptprism/concept_lora", "tooltip": "Name (and optional subfolder) inside models/loras. A counter is appended; existing files are never overwritten. < > : \" | ? * become '_'."}),
            "save_dtype": (list(SAVE_DTYPES), {"default": "float32", "tooltip": "float32 keeps the trained values exactly; float16 or bfloat16 halve the file."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        return validate_save_folder(NODE, "filename_prefix", "loras", filename_prefix)

    def save(self, lora, filename_prefix: str, save_dtype: str):
        if not hasattr(lora, "metadata"):
            raise ValueError("Save Prism LoRA: this LORA_MODEL did not come from Prism LoRA Train (it has no ConceptPrism "
                             "header). Save it with the host's Save LoRA Weights node instead.")
        refuse_unwritable_folder(NODE, "filename_prefix", "loras", filename_prefix)
        root = first_folder("loras")
        name = save_lora(lora, root, checked_prefix("filename_prefix", filename_prefix), save_dtype).relative_to(root.resolve()).as_posix()
        return {"ui": {"text": [name]}, "result": (name,)}
