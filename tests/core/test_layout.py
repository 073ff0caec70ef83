"""The layout's one-way arrows, read from the source: nodes -> prism_core.host -> prism_core's algorithm.

prism_core's algorithm modules (everything in prism_core/ but host/) import only the standard library,
torch, safetensors, numpy and Pillow, so they are testable anywhere; only prism_core/host/ touches the
host (comfy, folder_paths, comfy_extras, server); nothing in prism_core imports nodes/.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALGORITHM = sorted(p for p in (ROOT / "prism_core").rglob("*.py") if "host" not in p.relative_to(ROOT / "prism_core").parts)
ADAPTERS = sorted((ROOT / "prism_core" / "host").rglob("*.py"))
INTERNALS = ROOT / "prism_core" / "host" / "internals"
NODE_FILES = sorted((ROOT / "nodes").rglob("*.py"))
# The host's public surface (prism_core/host/internals/contract.py says what counts and why): the only host
# modules that code outside internals/ may import.
PUBLIC_HOST_MODULES = {"comfy.model_management", "comfy.utils", "comfy.sd", "comfy.model_base", "comfy.model_sampling",
                       "comfy.supported_models", "comfy.samplers", "folder_paths", "nodes", "node_helpers", "server"}
# The attribute names through which the pack touches the internals contract.INTERNALS lists: only internals/
# may read them (test_internal_names_are_the_contracts keeps the two lists together).
INTERNAL_ATTRIBUTES = {
    "load_embed", "SDTokenizer", "SDClipModel", "embedding_directory", "embedding_key", "tokens_start",
    "tokenizer_adds_end_token", "tokenize_with_weights", "encode_token_weights", "set_clip_options",
    "reset_clip_options", "tokenizer_options", "layer_idx", "cond_stage_model", "CLIPLayer", "T5LayerFF",
    "T5LayerSelfAttention", "DoubleStreamBlock", "SingleStreamBlock", "apply_rope", "guidance_embed", "guidance_in",
    "find_all_highest_child_module_with_forward", "add_weight_wrapper", "set_model_compute_dtype", "backup",
    "weight_function", "cast_bias_weight", "is_dynamic", "move_weight_functions", "LoRAAdapter", "create_train",
    "to_train", "model_lora_keys_unet", "flux_to_diffusers", "should_use_fp16", "should_use_bf16",
    "supported_inference_dtypes", "IMAGE_ENCODERS", "validate_node_input", "unet_config", "cond",
    "return_all_hidden_states", "visual_projection", "disable_dynamic", "TransformerBlock", "in_training"}
THIRD_PARTY_ALLOWED = {"torch", "safetensors", "numpy", "PIL"}
HOST_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "folder_paths", "server", "execution", "nodes", "node_helpers"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(relative level, dotted module) for every import in the file; level 0 = absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            found += [(node.level, f"{module}.{alias.name}".strip(".")) for alias in node.names] if node.level else [(0, module)]
    return found


def resolved(path: Path, level: int, module: str) -> str:
    """The dotted module (from the repository root, e.g. 'prism_core.formats.token_bank') a relative import of
    `path` names; '' where it climbs above the repository's package."""
    package = list(path.relative_to(ROOT).parent.parts)
    if level - 1 > len(package):
        return ""
    return ".".join(package[:len(package) - (level - 1)] + [m for m in module.split(".") if m])


def internal_attributes_read(path: Path) -> list[tuple[int, str]]:
    """(line, name) for every name in INTERNAL_ATTRIBUTES the file reads: as an attribute (`.name`), imported by
    name (`from comfy.x import name`), or as a string given to getattr/hasattr/setattr/delattr."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_ATTRIBUTES:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found += [(node.lineno, a.name) for a in node.names if a.name in INTERNAL_ATTRIBUTES]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in INTERNAL_ATTRIBUTES):
            found.append((node.lineno, node.args[1].value))
    return found


def test_the_files_are_there():
    assert len(ALGORITHM) >= 10 and len(ADAPTERS) >= 8, (ALGORITHM, ADAPTERS)


@pytest.mark.parametrize("path", ALGORITHM, ids=lambda p: p.name)
def test_algorithm_modules_import_no_host(path):
    for level, module in imports(path):
        top = module.split(".")[0]
        if level == 0:
            assert top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED, f"{path.name} imports {module}"
        else:
            target = resolved(path, level, module).split(".")
            assert target[0] == "prism_core" and target[1:2] != ["host"], (
                f"{path.relative_to(ROOT)} imports {'.' * level}{module}: the algorithm must not reach the host or nodes")


@pytest.mark.parametrize("path", ADAPTERS, ids=lambda p: p.name)
def test_adapters_never_import_nodes(path):
    for level, module in imports(path):
        if level and resolved(path, level, module).split(".")[0] != "prism_core":
            pytest.fail(f"{path.relative_to(ROOT)} imports {'.' * level}{module}: arrows go nodes -> prism_core.host, never back")


PACK_FILES = sorted((ROOT / "prism_core").rglob("*.py")) + NODE_FILES + [ROOT / "__init__.py"]


def _exists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_imports_name_modules_that_exist(path):
    """Every relative import of the pack names a module of it (or a name in one): a file moved into a sub-folder
    without its importers following is caught here, before ComfyUI fails to load the pack."""
    for level, module in imports(path):
        if level:
            target = resolved(path, level, module)
            assert target and (_exists(target) or _exists(target.rpartition(".")[0])), (
                f"{path.relative_to(ROOT)} imports {'.' * level}{module}: no such module in the pack")


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import comfy.model_management\nfrom .host import text\n")
    found = imports(bad)
    assert (0, "comfy.model_management") in found and (1, "host.text") in found
    nested = ROOT / "prism_core" / "training" / "bad.py"
    assert resolved(nested, 2, "host.text") == "prism_core.host.text"
    assert resolved(nested, 2, "formats.token_bank") == "prism_core.formats.token_bank"
    assert resolved(ROOT / "prism_core" / "host" / "x.py", 3, "nodes.types") == "nodes.types"
    assert not _exists("prism_core.host.pictures.previews") and _exists("prism_core.host.previews")


OUTSIDE_INTERNALS = [p for p in ADAPTERS if INTERNALS not in p.parents] + NODE_FILES


@pytest.mark.parametrize("path", OUTSIDE_INTERNALS, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_contract_touches_host_internals(path):
    for level, module in imports(path):
        if level == 0 and module.split(".")[0] in HOST_MODULES:
            assert module in PUBLIC_HOST_MODULES, (
                f"{path.relative_to(ROOT)} imports {module}: host internals are used only in prism_core/host/internals/ "
                "(add it there, with a contract entry and a guard test)")
    read = internal_attributes_read(path)
    assert not read, (f"{path.relative_to(ROOT)} reads host internals {read}: use them through "
                      "prism_core/host/internals/ (with a contract entry and a guard test)")


def test_internal_names_are_the_contracts():
    """INTERNAL_ATTRIBUTES holds no dead names (each is read in internals/), and every entry of contract.INTERNALS
    is named by one of them, so the layout check and the contract cover the same internals."""
    from comfyui_conceptprism.prism_core.host.internals import contract
    source = "\n".join(p.read_text() for p in INTERNALS.glob("*.py") if p.name != "contract.py")
    dead = sorted(name for name in INTERNAL_ATTRIBUTES if not re.search(rf"\b{name}\b", source))
    assert not dead, f"listed but used nowhere in internals/ (outside the contract's probes): {dead}"
    for internal in contract.INTERNALS:
        names = set(re.findall(r"\w+", internal.symbol + " " + internal.why))
        assert names & INTERNAL_ATTRIBUTES, f"{internal.symbol}: none of its names is in INTERNAL_ATTRIBUTES"


def test_the_internals_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import comfy.sd1_clip\nfrom comfy.utils import flux_to_diffusers\n"
                   "x = clip.cond_stage_model.encode_token_weights(t)\ny = getattr(clip, 'layer_idx')\n")
    assert (0, "comfy.sd1_clip") in imports(bad) and "comfy.sd1_clip" not in PUBLIC_HOST_MODULES
    assert sorted(name for _, name in internal_attributes_read(bad)) == [
        "cond_stage_model", "encode_token_weights", "flux_to_diffusers", "layer_idx"]



def test_the_readme_table_is_the_contract():
    """The README's host-contract table lists exactly contract.INTERNALS (symbol, guard, releases), and every CI
    release (.ci/hosts) is among the releases the contract says it was checked on."""
    from comfyui_conceptprism.prism_core.host.internals import contract
    rows = re.findall(r"^\s*\| `([^`]+)` \| [^|]+ \| ([^|]+) \| `(test_\w+)` \|$", (ROOT / "README.md").read_text(), re.M)
    listed = {(symbol, guard) for symbol, _, guard in rows}
    assert listed == {(i.symbol, i.guard) for i in contract.INTERNALS}, listed ^ {(i.symbol, i.guard) for i in contract.INTERNALS}
    assert all(checked.strip() == ", ".join(contract.CHECKED_RELEASES) for _, checked, _ in rows)
    ci = [line.split()[0] for line in (ROOT / ".ci" / "hosts").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert set(ci) <= set(contract.CHECKED_RELEASES), (ci, contract.CHECKED_RELEASES)
    guards = (ROOT / "tests" / "host" / "test_host_contract.py").read_text()
    assert all(f"def {i.guard}(" in guards for i in contract.INTERNALS)


@pytest.mark.parametrize("path", [ROOT / "prism_core" / "training" / "stage2.py", ROOT / "prism_core" / "host" / "stage2.py",
                                  ROOT / "prism_core" / "host" / "stage2_backend.py", ROOT / "nodes" / "lora_train.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_stage2_imports_nothing_from_stage1s_files(path):
    """The stages share their vocabulary through prompts.py, batching.py, losses.py and host/runtime.py; Stage 2
    does not reach into Stage 1's loop, adapters or node."""
    stage1 = {"stage1", "stage1_backend", "optimize_tokens"}
    for level, module in imports(path):
        assert not set(module.split(".")) & stage1, f"{path.relative_to(ROOT)} imports {'.' * level}{module}"
