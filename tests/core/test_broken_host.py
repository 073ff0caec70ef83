"""A ComfyUI that is found but does not import (a broken install) skips the host tier; the core tier runs.

Runs pytest in a subprocess with COMFYUI_PATH at a stand-in checkout whose comfy.model_management
raises on import, as a torchvision built for another torch does, and looks at what pytest reports.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _broken_host(root: Path) -> Path:
    comfy = root / "comfy"
    comfy.mkdir(parents=True)
    (comfy / "__init__.py").write_text("")
    (comfy / "cli_args.py").write_text("class _Args:\n    cpu = False\n    use_pytorch_cross_attention = False\n\n\nargs = _Args()\n")
    (comfy / "model_management.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    return root


def _pytest(host: Path, *extra_env: tuple[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CONCEPTPRISM_REQUIRE_HOST"}
    env.update({"COMFYUI_PATH": str(host), "PYTHONDONTWRITEBYTECODE": "1", **dict(extra_env)})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "core/test_layout.py", "host/test_stage1_losses.py"],
                          cwd=TESTS, env=env, capture_output=True, text=True, timeout=300)


def test_a_broken_host_skips_the_host_tier_and_the_core_tier_runs(tmp_path):
    result = _pytest(_broken_host(tmp_path / "ComfyUI"))
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "does not import in this Python" in result.stdout and "torchvision::nms" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "1 skipped" in summary and "error" not in summary, summary


def test_in_ci_a_broken_host_fails_and_the_core_tier_still_runs(tmp_path):
    result = _pytest(_broken_host(tmp_path / "ComfyUI"), ("CONCEPTPRISM_REQUIRE_HOST", "1"))
    print(result.stdout[-3000:])
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode != 0 and " passed" in summary and "1 error" in summary, summary
