"""Load Concept Set's checks before a run: the host's VALIDATE_INPUTS, on the widget values alone.

ComfyUI validates every node of a prompt before running any, and reports all failures together (the
frontend's "Prompt outputs failed validation" dialog), so a first Run with neither a checkpoint nor
images names both. The host lists a VALIDATE_INPUTS message once per input the method takes, so the
dialog shows it twice (for 'folder' and 'input_types'). Only what the widgets say can be checked here: inputs fed by a link are not passed
(ComfyUI docs, server_overview "Validating Constants"; both tested hosts pass None). Which inputs are
linked comes from `input_types`, the host's map of linked input -> received type; asking for it turns
off the host's own type check of linked inputs for this node, so `linked_type_problems` makes that
check itself with the host's function. Nothing here creates folders or reads image data.

`report_concept_set` is the node's other half, when it runs: before any training node gets the concept set,
what will train badly is said in the console and on the node, and skipped files in one console line.
"""
from __future__ import annotations

import logging
from typing import Any

import folder_paths

from ..concept_input.concept_folder import list_image_files, skipped_message, too_few_images_message
from ..concept_input.concept_set import ConceptSet
from ..concept_input.images import ConceptSetError
from .folders import resolve_input_folder
from .internals import contract
from .internals.host_helpers import link_type_matches
from .runtime import show_text

log = logging.getLogger("ConceptPrism")

NODE = "Load Concept Set"
FEWEST_IMAGES = 2
EXAMPLE_FOLDER = "conceptprism/my_concept"


def _one(value: Any) -> Any:
    """The value itself: INPUT_IS_LIST nodes get every input as a list (one element for a widget)."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


def linked_type_problems(node_class: type, input_types: dict[str, Any]) -> list[str]:
    """The host's link type check (execution.validate_inputs' "return_type_mismatch"), for the inputs
    in `input_types`; one line per mismatch, naming the input as the node shows it."""
    declared = {name: spec[0] for section in ("required", "optional")
                for name, spec in node_class.INPUT_TYPES().get(section, {}).items()}
    return [f"'{name}' is connected to a {received} output but takes {declared[name]}: connect an output of that type."
            for name, received in input_types.items()
            if name in declared and not link_type_matches(received, declared[name])]


def concept_folder_problem(folder: str) -> str | None:
    """None when `folder` (as typed: under ComfyUI's input folder, or absolute) holds at least 2 images
    the loader accepts; otherwise what is wrong, with the folder's full path and how many images to add."""
    add = (f"put {FEWEST_IMAGES}-6 images of your concept there (PNG or JPEG, and if you like a caption "
           "<image name>.txt beside each), or connect an IMAGE batch to 'images'")
    if not folder.strip():
        example = resolve_input_folder(EXAMPLE_FOLDER)
        return (f"'folder' is empty. Name a folder of {FEWEST_IMAGES}-6 images of your concept, inside "
                f"{folder_paths.get_input_directory()} (e.g. {EXAMPLE_FOLDER} for {example}) or as an absolute "
                "path, or connect an IMAGE batch to 'images'.")
    path = resolve_input_folder(folder)
    if not path.exists():
        return f"the folder {path} does not exist. Create it and {add}."
    if not path.is_dir():
        return f"{path} is a file, not a folder: name the folder that holds the images."
    try:
        count = len(list_image_files(path))
    except ConceptSetError as error:  # a file the loader would refuse: its own message names it
        return str(error)
    if count < FEWEST_IMAGES:
        if count == 0 and too_few_images_message(path, folder, 0).find("one level down") >= 0:
            return too_few_images_message(path, folder, 0)  # a kohya-style parent: name the subfolder to point at
        return (f"the folder {path} holds {count} image{'s' if count != 1 else ''}; ConceptPrism needs at least "
                f"{FEWEST_IMAGES} that share the concept (4-6 work best): add {FEWEST_IMAGES - count} or more there, "
                "or connect an IMAGE batch to 'images'.")
    return None


def validate_load_concept_set(node_class: type, folder: Any, input_types: Any) -> bool | str:
    """VALIDATE_INPUTS for Load Concept Set: True, or one message for the host to show.

    folder: the widget's value (a one-element list when the node has INPUT_IS_LIST);
    input_types: {linked input name: received type} (likewise, possibly in a one-element list).
    The folder is checked only when it is a widget value and no IMAGE batch is linked to 'images'
    (which the node then uses instead).
    """
    linked = _one(input_types) or {}
    changed = contract.problems(contract.LINKS) if linked else []  # the host's rule is asked only for links
    if changed:
        return contract.refusal(NODE, changed)
    problems = linked_type_problems(node_class, linked)
    folder = _one(folder)
    if "images" not in linked and "folder" not in linked and folder is not None:
        problem = concept_folder_problem(str(folder))
        if problem:
            problems.append(problem)
    return True if not problems else f"{NODE}: " + " ".join(problems)


def report_concept_set(concept: ConceptSet, typed_folder: str | None, node_id: str | None) -> None:
    """Say what Load Concept Set found, before training: each warning (duplicates, images scaled up a lot) as a
    console warning and, all together, as text on the node (`node_id`; nothing without a server); the files a
    folder held that were skipped (not images) as one console line. OS debris was skipped without a word."""
    if concept.skipped and typed_folder is not None:
        log.info(skipped_message(concept.skipped, typed_folder))
    for warning in concept.warnings:
        log.warning(warning)
    if concept.warnings:
        show_text("\n".join(w.removeprefix("ConceptPrism: ") for w in concept.warnings), node_id)
