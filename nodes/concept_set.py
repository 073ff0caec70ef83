"""LoadConceptSet: reference images and captions, squared to the training resolution."""
from __future__ import annotations

import hashlib

from ..prism_core.concept_input import concept_set
from ..prism_core.concept_input import images as image_io
from ..prism_core.concept_input.concept_folder import typed_folder
from ..prism_core.host.concept_set_checks import report_concept_set, validate_load_concept_set
from ..prism_core.host.folders import resolve_input_folder
from .types import CATEGORY, CONCEPT_SET


def _listed(value):
    """With INPUT_IS_LIST the executor passes every input as a list; a direct call may pass plain values."""
    return value if isinstance(value, list) or value is None else [value]


def _one(values: list, name: str):
    """A setting that must have one value."""
    distinct = list(dict.fromkeys(values))
    if len(distinct) != 1:
        raise image_io.ConceptSetError(f"LoadConceptSet: '{name}' got {len(values)} different values from a list "
                                       f"({distinct[:3]}...): connect a single value.")
    return distinct[0]


class LoadConceptSet:
    CATEGORY = CATEGORY
    RETURN_TYPES = (CONCEPT_SET, "IMAGE")
    RETURN_NAMES = ("concept_set", "preview")
    OUTPUT_TOOLTIPS = ("The images (resized and center-cropped) with their captions, for the ConceptPrism training nodes.",
                       "The images exactly as training will see them.")
    FUNCTION = "load"
    DESCRIPTION = "2-6 images that share one concept (an object, a style, a pose), with one caption per image."
    # Captioners and list-based image loaders output one item per image (OUTPUT_IS_LIST); without this the
    # executor would call the node once per item ("Only 1 image"). Every input then arrives as a list.
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {"default": "conceptprism/my_concept", "tooltip": "Folder of reference images: a subfolder of ComfyUI's input directory or an absolute path. Captions come from <image name>.txt (or kohya's .caption) files beside the images (same name, extension in any case). Notes, .json and .npz caches beside them are skipped; subfolders are not read. Ignored when 'images' is connected."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64, "tooltip": "Training resolution: images are scaled so the short side fits and center-cropped to a square. 512 for SD1.5/SD2.1-base, 768 for SD2.1-768-v, 1024 for SDXL."}),
                "captions": ("STRING", {"multiline": True, "default": "", "tooltip": "Optional: one caption per line, one line per image in file-name order (8-32 words describing the whole image). Overrides sidecar .txt files. Leave empty to use them."}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Optional images to use instead of the folder: an IMAGE batch, or a list of images from a list-output node (sizes may differ; each is resized like folder images)."}),
                "caption_text": ("STRING", {"forceInput": True, "tooltip": "Optional captions from another node: one string with one line per image, or a captioning node's list output (one string per image). Overrides the captions widget."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},  # to show warnings about the images on this node
        }

    @classmethod
    def VALIDATE_INPUTS(cls, folder, input_types):
        # Before any node runs, so a first Run names a missing folder together with, say, a missing checkpoint.
        return validate_load_concept_set(cls, folder, input_types)

    @classmethod
    def IS_CHANGED(cls, folder, resolution, captions, images=None, caption_text=None, unique_id=None):
        if images is not None:
            return ""
        # Re-run when files in the folder change, not only when the widgets do.
        path = resolve_input_folder(_listed(folder)[0])
        digest = hashlib.sha256()
        if path.is_dir():
            for item in sorted(path.iterdir()):
                if item.is_file():
                    stat = item.stat()
                    digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def load(self, folder, resolution, captions, images=None, caption_text=None, unique_id=None):
        folder, resolution, captions, images, caption_text = map(_listed, (folder, resolution, captions, images, caption_text))
        node_id = _listed(unique_id)[0] if unique_id is not None else None
        folder, resolution = _one(folder, "folder"), _one(resolution, "resolution")
        if caption_text is not None and any(text.strip() for text in caption_text):
            lines, source = concept_set.caption_lines(caption_text), "caption_text input"
        else:
            lines, source = concept_set.caption_lines(captions), "captions widget"
        typed = None
        if images is not None:
            result = concept_set.from_batch(images, resolution, lines, source)
        else:
            typed = typed_folder(folder)
            if not typed:
                raise image_io.ConceptSetError("LoadConceptSet: 'folder' is empty. Name a folder of images (inside ComfyUI's input directory or an absolute path), or connect an IMAGE batch to 'images'.")
            result = concept_set.from_folder(resolve_input_folder(folder), resolution, lines, source, typed)
        report_concept_set(result, typed, node_id)
        return (result, result.images.clone())
