"""What a concept folder holds: which files are images, which caption belongs to which image, and what to
tell the user when the folder is not the one they meant.

One pairing rule, used for listing and for reading: image `<stem>.<ext>` takes the caption file with the
same stem, exactly, and the extension `.txt` or kohya's `.caption` in any case (`IMG_0001.JPG` +
`IMG_0001.TXT`), whatever the file system's case rules. Errors name the folder as the user typed it (and
the path it resolved to).

What else a folder may hold, as other trainers' folders do (kohya, ai-toolkit and ComfyUI's own dataset
loaders skip it): known non-image files (notes, metadata, latent caches) are skipped and listed for a console
line; OS debris (desktop.ini, Thumbs.db, hidden files) is skipped silently. Image formats the pack cannot
read (HEIC, camera RAW, PSD, ...) and files of unknown kind are refused with the fix, since skipping them
could silently drop a reference photo the user meant to include. Pure module: standard library only.
"""
from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

from .images import IMAGE_EXTENSIONS, ConceptSetError

CAPTION_SUFFIX = ".txt"
CAPTION_SUFFIXES: frozenset[str] = frozenset({CAPTION_SUFFIX, ".caption"})  # .caption: kohya's other sidecar

# Files every OS leaves in folders: never the user's, skipped without a word. (Hidden files, ".DS_Store" and
# macOS "._" resource forks among them, are skipped by `_visible_files`.)
OS_DEBRIS: frozenset[str] = frozenset({"desktop.ini", "thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "icon\r"})

# Known non-image files that sit beside training images: notes, trainer metadata and configs, kohya's latent and
# text-encoder caches (.npz), model files, archives, videos. Skipped, each named in one console line.
NON_IMAGE_EXTENSIONS: frozenset[str] = frozenset({
    ".md", ".markdown", ".rst", ".rtf", ".pdf", ".doc", ".docx", ".odt", ".html", ".htm",
    ".json", ".jsonl", ".toml", ".yaml", ".yml", ".ini", ".cfg", ".csv", ".tsv", ".xml", ".xmp", ".log",
    ".npz", ".npy", ".safetensors", ".ckpt", ".pt", ".pth", ".bin",
    ".py", ".sh", ".bat", ".ps1", ".zip", ".7z", ".rar", ".tar", ".gz",
    ".mp4", ".mov", ".avi", ".mkv", ".webm", ".wav", ".mp3",
})

_RAW = ("a camera RAW file", "develop it in your RAW converter (Lightroom, darktable, the camera's software) and export "
        "a JPEG or PNG")
_HEIC = ("HEIC/HEIF (the iPhone default)", "convert it to JPEG (Photos: Export; Windows Photos: Save as), or set the "
         "iPhone's Camera > Formats to Most Compatible")
# Image formats that Pillow (ComfyUI's decoder) cannot read, with the fix for each.
UNREADABLE_IMAGES: dict[str, tuple[str, str]] = {
    ".heic": _HEIC, ".heif": _HEIC, ".hif": _HEIC,
    ".psd": ("a Photoshop document", "export a flattened PNG or JPEG (File > Export)"),
    ".psb": ("a Photoshop document", "export a flattened PNG or JPEG (File > Export)"),
    ".jxl": ("JPEG XL", "convert it to PNG or JPEG"),
    ".svg": ("a vector drawing", "render it to a PNG at least as large as the training resolution"),
    ".exr": ("an HDR image", "tone-map it and save a PNG or JPEG"),
    ".hdr": ("an HDR image", "tone-map it and save a PNG or JPEG"),
    **{ext: _RAW for ext in (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2",
                             ".raf", ".pef", ".srw", ".x3f", ".3fr", ".erf", ".kdc", ".mrw", ".raw", ".rwl", ".iiq")},
}
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
    return path.suffix.lower() in CAPTION_SUFFIXES


def _unreadable_images_message(unreadable: list[pathlib.Path], where: str) -> str:
    """One refusal naming every image the pack cannot read, each with its format's fix."""
    if ".avif" in {p.suffix.lower() for p in unreadable}:
        fixes = {".avif": ("AVIF", "this Pillow cannot decode AVIF: update Pillow to 11.3 or later, or save it as "
                                   "PNG or JPEG")}
    else:
        fixes = {}
    parts = []
    for path in unreadable:
        kind, fix = fixes.get(path.suffix.lower()) or UNREADABLE_IMAGES[path.suffix.lower()]
        parts.append(f"'{path.name}' is {kind}: {fix}")
    plural = "an image" if len(unreadable) == 1 else f"{len(unreadable)} images"
    return (f"Concept folder {where} holds {plural} ConceptPrism cannot read: " + "; ".join(parts) +
            ". Then put the PNG or JPEG in the folder and move the original out.")


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
    """images: natural name order; captions[i] is image i's caption file, or None; skipped: the known
    non-image files and captions without an image that were left out (natural order; OS debris not listed)."""

    images: list[pathlib.Path]
    captions: list[pathlib.Path | None]
    skipped: tuple[str, ...] = ()


def _pair_captions(root: pathlib.Path, where: str, images: list[pathlib.Path],
                   captions: list[pathlib.Path]) -> tuple[list[pathlib.Path | None], list[pathlib.Path]]:
    """(image i's caption or None, captions whose stem is no image's at all, for the skipped list)."""
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
    orphans = []
    for caption in captions:
        i = by_folded.get(caption.stem.casefold())
        if caption.stem in image_stems:
            continue
        if i is None:
            orphans.append(caption)  # notes.txt, or the caption of an image that was removed: no image to guess
            continue
        image = images[i]
        fix = (f"delete it or merge it into '{paired[i].name}', which is '{image.name}''s caption" if paired[i] is not None
               else f"rename it to '{image.stem}{caption.suffix}' for '{image.name}'")
        raise ConceptSetError(f"Caption '{caption.name}' in concept folder {where} belongs to no image: a caption pairs "
                              f"with the image of exactly the same name. {fix[0].upper()}{fix[1:]}.")
    return paired, orphans


def read_folder(folder: str | os.PathLike, typed: str | None = None) -> FolderContents:
    """The images directly in `folder`, each one's caption file, and what was skipped.

    `typed` is the folder as the user wrote it (default: the path), used in every message. Subfolders are
    not read. Known non-image files (NON_IMAGE_EXTENSIONS) and captions without an image are skipped and
    listed in `skipped`; OS debris silently. Image formats the pack cannot read, files of unknown kind,
    and ambiguous or misnamed captions raise ConceptSetError with the fix.
    """
    root = pathlib.Path(folder).expanduser()
    typed = str(folder) if typed is None else typed
    _check_folder(root, typed)
    where = shown(typed, root)
    images, captions, skipped, unreadable, unknown = [], [], [], [], []
    for entry in _visible_files(root):
        suffix = entry.suffix.lower()
        if entry.name.casefold() in OS_DEBRIS:
            continue
        if is_caption(entry):
            captions.append(entry)
        elif is_image(entry):
            images.append(entry)
        elif suffix in UNREADABLE_IMAGES or suffix == ".avif":  # .avif lands here only where Pillow cannot read it
            unreadable.append(entry)
        elif suffix in NON_IMAGE_EXTENSIONS:
            skipped.append(entry)
        else:
            unknown.append(entry)
    if unreadable:
        raise ConceptSetError(_unreadable_images_message(sorted(unreadable, key=_natural_key), where))
    if unknown:
        allowed = " ".join(sorted(IMAGE_EXTENSIONS))
        names = ", ".join(f"'{p.name}'" for p in sorted(unknown, key=_natural_key))
        raise ConceptSetError(f"{names} in concept folder {where}: not an image ConceptPrism reads ({allowed}), a .txt "
                              "or .caption caption, or a file it knows to skip (notes, .json, kohya's .npz caches). "
                              "If it is an image, save it as PNG or JPEG; otherwise move it out of the folder.")
    images.sort(key=_natural_key)
    paired, orphans = _pair_captions(root, where, images, captions)
    skipped_names = tuple(p.name for p in sorted(skipped + orphans, key=_natural_key))
    return FolderContents(images, paired, skipped_names)


def skipped_message(skipped: tuple[str, ...] | list[str], typed: str) -> str:
    """The console line for files `read_folder` skipped (empty when none)."""
    if not skipped:
        return ""
    what = "1 file" if len(skipped) == 1 else f"{len(skipped)} files"
    kind = "is not an image" if len(skipped) == 1 else "are not images"
    return (f"ConceptPrism: skipped {what} in concept folder '{typed}' that {kind}: {', '.join(skipped)} "
            "(captions pair only with an image of the same name).")


def list_image_files(folder: str | os.PathLike, typed: str | None = None) -> list[pathlib.Path]:
    """Image files directly in `folder`, in natural, case-insensitive name order (see `read_folder`)."""
    return read_folder(folder, typed).images


def read_caption(path: pathlib.Path | None) -> str | None:
    """A caption file's (.txt or .caption) text with whitespace collapsed; None for no file or an empty one."""
    if path is None:
        return None
    try:
        text = path.read_bytes().decode("utf-8-sig")  # utf-8-sig drops a leading BOM if present
    except UnicodeDecodeError as exc:
        raise ConceptSetError(f"Caption file '{path.name}' ({path}) is not UTF-8 text: re-save it as UTF-8.") from exc
    caption = " ".join(text.split())
    return caption or None
