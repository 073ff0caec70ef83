"""Safetensors files written the way ComfyUI names outputs: never overwriting, never half-written."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import safetensors.torch
import torch

from .names import file_prefix


def _counter_pattern(stem: str, extension: str) -> re.Pattern[str]:
    return re.compile(re.escape(stem) + r"_(\d+)_" + re.escape(extension) + r"$")


def next_counter(directory: Path, stem: str, extension: str) -> int:
    """1 + the highest counter among `<stem>_NNNNN_<extension>` files in `directory` (1 if none)."""
    pattern = _counter_pattern(stem, extension)
    counters = [int(m.group(1)) for p in directory.iterdir() if (m := pattern.match(p.name))] if directory.is_dir() else []
    return max(counters, default=0) + 1


def split_prefix(root: Path, prefix: str) -> tuple[Path, str]:
    """ComfyUI's filename_prefix may name a subfolder ("concepts/dog"); keep it inside `root`. Characters no
    portable file name may hold become '_' (`names.file_prefix`; nodes log it through `names.checked_prefix`)."""
    prefix = file_prefix(prefix)
    target = (root / prefix).resolve()
    root = root.resolve()
    if os.path.commonpath([root, target]) != str(root):
        raise ValueError(f"filename_prefix '{prefix}' points outside {root}; use a plain name or a subfolder.")
    return target.parent, target.name


def unwritable_reason(directory: Path) -> str | None:
    """None when a save could create a file in `directory`, else why not, naming the path that stops it.

    `directory` need not exist yet (a save creates its missing folders), so the check is made on the deepest
    part of it that does exist: that must be a folder (a file or a dangling link there makes every save below
    it fail) in which a file can be created. It is tried, not inferred from permission bits: `os.access` says
    yes to root whatever the mode, and on Windows ignores folder ACLs, while a read-only mount or a network
    share refuses only the write itself. (A full disk or quota is not found this way: an empty file still fits.) The probe is a temporary file, made the way
    `save_new_safetensors` makes its own and deleted at once; nothing is left behind, no folder is created.
    """
    existing = Path(directory)
    try:
        while not existing.exists() and not existing.is_symlink() and existing.parent != existing:
            existing = existing.parent
        if existing.is_symlink() and not existing.exists():
            return f"{existing} is a link to {os.readlink(existing)}, which does not exist"
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        descriptor, probe = tempfile.mkstemp(prefix=".conceptprism-write-check.", suffix=".tmp", dir=existing)
    except OSError as error:  # permission denied, read-only file system, a path the OS cannot look into
        return f"{existing} cannot be written to ({error.strerror or error})"
    os.close(descriptor)
    os.unlink(probe)
    return None


def save_new_safetensors(
    root: Path, prefix: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
    extension: str = ".safetensors",
) -> Path:
    """Write `tensors` to a new `<root>/<prefix>_NNNNN_.safetensors` and return its path.

    The file is written to a temporary name in the same folder and then hard-linked to the final
    name, which fails if that name exists: an existing file is never overwritten (even by a
    concurrent writer) and an interrupted write leaves no file under the final name. File systems
    without hard links (FAT32/exFAT drives, some network and cloud-synced folders) refuse the link;
    there the final name is reserved by an exclusive create and the finished file renamed over that
    reservation (atomic on one file system), which keeps both promises.
    """
    directory, stem = split_prefix(Path(root), prefix)
    directory.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    descriptor, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
    os.close(descriptor)
    try:
        safetensors.torch.save_file(contiguous, temporary, metadata=metadata)
        counter = next_counter(directory, stem, extension)
        while True:
            final = directory / f"{stem}_{counter:05}_{extension}"
            try:
                os.link(temporary, final)
                return final
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links here: reserve the name, then rename over the reservation
                try:
                    os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    counter += 1
                    continue
                os.replace(temporary, final)
                return final
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (on CPU) and header metadata of a safetensors file. Never unpickles anything."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading its tensors."""
    with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {})
