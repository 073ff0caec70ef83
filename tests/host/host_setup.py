"""The host tier's entry: skip (or, in CI, fail) without a host; otherwise import it on the CPU.

Finding the host and registering the pack is hostenv's job (shared with bench/ and eval/). With
CONCEPTPRISM_REQUIRE_HOST set (CI does), every "host missing" or "tool missing" skip is a failure
instead, so a broken install cannot pass green.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import hostenv
from hostenv import PACK_ROOT, find_host  # noqa: F401  (re-exported for the host tests)

SKIP_REASON = "host tier skipped: " + hostenv.missing_host_reason()


def skip_or_fail(reason: str) -> None:
    """Skip the calling module with `reason`, or fail it when the host tier is required (CI)."""
    if hostenv.host_required():
        pytest.fail(f"{reason} ({hostenv.REQUIRE_ENV} is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_host() -> Path:
    """Skip (or fail) the calling module without a host, or with one that does not import; otherwise
    make `import comfy` work on the CPU. Either way the core tier still runs."""
    host = find_host()
    if host is None:
        skip_or_fail(SKIP_REASON)
    problem = hostenv.host_import_problem(host)
    if problem:
        skip_or_fail(f"host tier skipped: the ComfyUI at {host} does not import in this Python ({problem}). Install "
                     "its requirements into this Python, torch and torchvision from the same index so they match "
                     "(README, 'Tests and CI').")
    return host


def fake_server():
    """The little of PromptServer that the executor talks to, recording what it is sent."""
    class Server:
        client_id = "test-client"
        last_node_id = None
        def __init__(self):
            self.messages = []
        def send_sync(self, event, data, sid=None):
            self.messages.append((event, data))
    return Server()
