"""What a concept folder holds: which files are images, which caption belongs to which image, and what to
tell the user when the folder is not the one they meant.

One pairing rule, used for listing and for reading: image `<stem>.<ext>` takes the caption file with the
same stem, exactly, and the extension `.txt` in any case (`IMG_0001.JPG` + `IMG_0001.TXT`), whatever the
file system's case rules. Errors name the folder as the user typed it (and the path it resolved to).
Pure module: standard library only.
"""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

from .images import IMAGE_EXTENSIONS, ConceptSetError

CAPTION_SUFFIX = ".txt"
_NATURAL_SPLIT = re.compile(r"(\d+)")
_LISTED_SUBFOLDERS = 6  # how many subfolders an error names before "..."


def _natural_key(path: pathlib.Path) -> tuple[tuple[tuple[int, int | str], ...], str]:
    # "img2" before "img10", case-insensitive; the raw name breaks ties so order is total and deterministic.
    parts = _NATURAL_SPLIT.split(path.name.casefold())
    key = tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p != "")
    return key, path.name


def is_image(path: pathlib.Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def is_caption(path: pathlib.Path) -> bool:
    return path.suffix.lower() == CAPTION_SUFFIX


def _visible_files(root: pathlib.Path) -> list[pathlib.Path]:
    # Hidden files (".DS_Store", macOS "._IMG_0001.txt" resource forks) are never images or captions.
    return [e for e in root.iterdir() if not e.name.startswith(".") and e.is_file()]


def typed_folder(folder: str) -> str:
    """The folder widget's text without surrounding whitespace or the quotes Windows' "Copy as path" adds."""
    text = folder.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def shown(typed: str, path: pathlib.Path) -> str:
    """The folder as the user typed it, with the path it resolved to when that reads differently."""
    return f"'{typed}'" if os.path.normpath(typed) == os.path.normpath(str(path)) else f"'{typed}' ({path})"


def _join_typed(typed: str, name: str) -> str:
    """`name` inside the folder the user typed, with the separator they used (for a fix they can paste)."""
    separator = "\\" if "\\" in typed and "/" not in typed else "/"
    return typed.rstrip("/\\") + separator + name


def _subfolders_with_images(root: pathlib.Path) -> list[tuple[str, int]]:
    found = []
    for entry in sorted((e for e in root.iterdir() if e.is_dir() and not e.name.startswith(".")), key=_natural_key):
        try:
            count = sum(1 for f in _visible_files(entry) if is_image(f))
        except OSError:
            continue
        if count:
            found.append((entry.name, count))
    return found


def _check_folder(root: pathlib.Path, typed: str) -> None:
    if root.is_dir():
        return
    where = shown(typed, root)
    if root.exists():
        if is_image(root):
            parent = os.path.dirname(typed.rstrip("/\\")) or "."
            raise ConceptSetError(f"Concept folder {where} is an image, not a folder: set folder to the folder that "
                                  f"holds the images, '{parent}'.")
        raise ConceptSetError(f"Concept folder {where} is a file, not a folder: set folder to the folder that holds the images.")
    parent = root.parent
    if parent.is_dir():
        names = sorted((e.name for e in parent.iterdir() if e.is_dir() and not e.name.startswith(".")), key=str.casefold)
        listed = ", ".join(names[:_LISTED_SUBFOLDERS]) + (", ..." if len(names) > _LISTED_SUBFOLDERS else "")
        holds = f"; its parent {parent} holds the folders: {listed}" if names else f"; its parent {parent} has no folders"
        raise ConceptSetError(f"Concept folder {where} does not exist{holds}. Check the name (case matters on Linux), "
                              "or create the folder and put 2-6 images of the concept in it.")
    raise ConceptSetError(f"Concept folder {where} does not exist, nor does its parent {parent}. A name without a drive "
                          "or leading / is read inside ComfyUI's input folder; give a full path for a folder elsewhere.")


def too_few_images_message(root: pathlib.Path, typed: str, count: int) -> str:
    """Why a folder with fewer than 2 images cannot be used, and the fix for this folder."""
    where = shown(typed, root)
    plural = "image" if count == 1 else "images"
    subfolders = _subfolders_with_images(root)
    if len(subfolders) == 1:
        name, n = subfolders[0]
        return (f"Only {count} {plural} directly in concept folder {where}: the images are one level down, in '{name}' "
                f"({n} images). Set folder to '{_join_typed(typed, name)}'.")
    if subfolders:
        listed = ", ".join(f"'{name}' ({n} images)" for name, n in subfolders[:_LISTED_SUBFOLDERS])
        more = ", ..." if len(subfolders) > _LISTED_SUBFOLDERS else ""
        return (f"Only {count} {plural} directly in concept folder {where}: the images are one level down, in the "
                f"subfolders {listed}{more}. Set folder to one of them, e.g. '{_join_typed(typed, subfolders[0][0])}'; "
                "subfolders are never read, so each concept needs its own folder.")
    allowed = " ".join(sorted(IMAGE_EXTENSIONS))
    return (f"Only {count} {plural} in concept folder {where}: ConceptPrism needs at least 2 images that share the "
            f"concept (4-6 work best). Put them in that folder ({allowed}).")


@dataclass(frozen=True)
class FolderContents:
    """images: natural name order; captions[i] is image i's caption file, or None."""

    images: list[pathlib.Path]
    captions: list[pathlib.Path | None]


def _pair_captions(root: pathlib.Path, where: str, images: list[pathlib.Path],
                   captions: list[pathlib.Path]) -> list[pathlib.Path | None]:
    by_stem: dict[str, list[pathlib.Path]] = {}
    for caption in captions:
        by_stem.setdefault(caption.stem, []).append(caption)
    paired = []
    for image in images:
        candidates = sorted(by_stem.get(image.stem, []), key=lambda p: p.name)
        if len(candidates) > 1:
            names = " and ".join(f"'{c.name}'" for c in candidates)
            raise ConceptSetError(f"Image '{image.name}' in concept folder {where} has {len(candidates)} captions, {names}: "
                                  "keep one of them (delete or rename the others).")
        paired.append(candidates[0] if candidates else None)
    # A caption whose stem matches an image only when case is ignored was meant for it; silently training without
    # it (what case-sensitive file systems would do) is worse than asking for the rename.
    image_stems = {image.stem for image in images}
    by_folded: dict[str, int] = {}
    for i, image in enumerate(images):
        by_folded.setdefault(image.stem.casefold(), i)
    for caption in captions:
        i = by_folded.get(caption.stem.casefold())
        if caption.stem in image_stems or i is None:
            continue
        image = images[i]
        fix = (f"delete it or merge it into '{paired[i].name}', which is '{image.name}''s caption" if paired[i] is not None
               else f"rename it to '{image.stem}{caption.suffix}' for '{image.name}'")
        raise ConceptSetError(f"Caption '{caption.name}' in concept folder {where} belongs to no image: a caption pairs "
                              f"with the image of exactly the same name. {fix[0].upper()}{fix[1:]}.")
    return paired


def read_folder(folder: str | os.PathLike, typed: str | None = None) -> FolderContents:
    """The images directly in `folder` and each one's caption file.

    `typed` is the folder as the user wrote it (default: the path), used in every message. Subfolders are
    not read; any file that is neither an image nor a `.txt` caption raises (dropping it silently could hide
    a reference the user meant to include); so do ambiguous or misnamed captions.
    """
    root = pathlib.Path(folder).expanduser()
    typed = str(folder) if typed is None else typed
    _check_folder(root, typed)
    where = shown(typed, root)
    images, captions = [], []
    for entry in _visible_files(root):
        if is_caption(entry):
            captions.append(entry)
        elif is_image(entry):
            images.append(entry)
        else:
            allowed = " ".join(sorted(IMAGE_EXTENSIONS))
            raise ConceptSetError(f"'{entry.name}' in concept folder {where} is not an image ({allowed}) or a .txt "
                                  "caption: remove it or move it out of the folder.")
    images.sort(key=_natural_key)
    return FolderContents(images, _pair_captions(root, where, images, captions))


def list_image_files(folder: str | os.PathLike, typed: str | None = None) -> list[pathlib.Path]:
    """Image files directly in `folder`, in natural, case-insensitive name order (see `read_folder`)."""
    return read_folder(folder, typed).images


def read_caption(path: pathlib.Path | None) -> str | None:
    """A caption file's text with whitespace collapsed; None for no file or an empty one."""
    if path is None:
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")  # utf-8-sig drops a leading BOM if present
    except UnicodeDecodeError as exc:
        raise ConceptSetError(f"Caption file '{path.name}' ({path}) is not UTF-8 text: re-save it as UTF-8.") from exc
    caption = " ".join(text.split())
    return caption or None
