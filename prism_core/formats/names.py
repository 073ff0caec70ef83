"""Output names users type (filename_prefix), made safe for the file systems and the prompt that read them.

Two readers matter:
- File systems. Windows refuses ``< > : " | ? *`` and control characters in a name (``:`` even makes an
  alternate data stream instead of a file on NTFS), drops trailing dots and spaces from folder names, and
  reserves device names (CON, NUL, COM1, ...) as folder names. Files saved here move between systems.
- ComfyUI's prompt grammar (``comfy/sd1_clip.py``, the same in every tested release): ``token_weights``
  reads ``(`` and ``)`` as weight groups before any word is looked at, and ``_try_get_embedding`` ends the
  name after ``embedding:`` at the first whitespace (``str.split()``, so any Unicode space). A saved
  embedding whose name holds any of these can never be named in a prompt.

The pack's rule (the same for every save node): each such character, or run of them, becomes one ``_``;
``/`` (or ``\\``) stays the subfolder separator. Callers say what changed (`renamed_note`).
"""
from __future__ import annotations

import logging
import re

# Characters Windows refuses in a file name, and ASCII control characters (0-31 and DEL).
_NOT_IN_FILE_NAMES = r'<>:"|?*\x00-\x1f\x7f'
# What ends or splits an `embedding:` word in a prompt: whitespace and the weight brackets.
_NOT_IN_PROMPT_WORDS = r"\s()"
_FILE_UNSAFE = re.compile(f"[{_NOT_IN_FILE_NAMES}]+")
_WORD_UNSAFE = re.compile(f"[{_NOT_IN_FILE_NAMES}{_NOT_IN_PROMPT_WORDS}]+")
# Device names Windows reserves, with or without an extension ("con.d" too); compared case-insensitively.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
DEFAULT_PREFIX = "ConceptPrism"


def _clean_part(part: str, unsafe: re.Pattern[str]) -> str:
    # Runs at either end are dropped ("rex (v2)" -> "rex_v2"), inner runs become one "_"; "." and ".." are kept
    # so that a prefix leaving the output folder is still refused where the path is resolved.
    if part in (".", ".."):
        return part
    return unsafe.sub("_", re.sub(f"^{unsafe.pattern}|{unsafe.pattern}$", "", part))


def _clean_parts(prefix: str, unsafe: re.Pattern[str]) -> str:
    parts = [_clean_part(part, unsafe) for part in prefix.strip().replace("\\", "/").split("/")]
    # The last part gets "_00001_" appended, so only folder parts can end in a dot/space or be a device name.
    folders = [p if p in (".", "..") else p.rstrip(". ") for p in parts[:-1]]
    folders = [p + "_" if p.split(".")[0].casefold() in _RESERVED else p for p in folders]
    cleaned = "/".join(p for p in [*folders, parts[-1]] if p)
    return cleaned or DEFAULT_PREFIX


def file_prefix(prefix: str) -> str:
    """`prefix` with what no portable file or folder name may hold replaced by '_' (subfolders kept)."""
    return _clean_parts(prefix, _FILE_UNSAFE)


def prompt_word_prefix(prefix: str) -> str:
    """`file_prefix`, and also no whitespace or brackets: the saved name works after ``embedding:`` in a prompt."""
    return _clean_parts(prefix, _WORD_UNSAFE)


def renamed_note(input_name: str, given: str, used: str, for_prompt: bool = False) -> str:
    """The line a save node logs when it changed the name the user typed."""
    why = ("spaces, brackets and < > : \" | ? * cannot be in a word that a prompt loads with embedding:" if for_prompt
           else "< > : \" | ? * and control characters cannot be in a file name on every system")
    return f"ConceptPrism: {input_name} '{given}' is saved as '{used}' ({why}; each run of them became '_')."


def checked_prefix(input_name: str, prefix: str, for_prompt: bool = False) -> str:
    """The prefix a save node uses for the `prefix` typed in its `input_name` widget; logs a warning when it
    differs (the node still saves: refusing after a training run would throw the run away)."""
    used = prompt_word_prefix(prefix) if for_prompt else file_prefix(prefix)
    if used != prefix.strip().replace("\\", "/"):
        logging.getLogger("ConceptPrism").warning(renamed_note(input_name, prefix, used, for_prompt))
    return used
