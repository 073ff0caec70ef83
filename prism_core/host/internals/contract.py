"""The host contract: every ComfyUI internal the pack relies on, how each is detected, and the refusal.

"Internal" means anything beyond the host's stable public surface. Public here: the node classes and their
functions, ``folder_paths``, ``comfy.utils.ProgressBar`` / ``load_torch_file``, ``comfy.sd.load_lora_for_models``,
``comfy.model_management``'s load and interrupt functions, ``comfy.samplers.KSampler``'s lists,
``server.PromptServer``, ``node_helpers`` (helpers the host writes for nodes), the MODEL and CLIP objects' methods the host's own nodes call (``clone``,
``get_model_object``, ``tokenize``, ``encode_from_tokens``, ``extra_conds``, ``apply_model``,
``model_sampling``'s ``noise_scaling`` and ``sigmas``), and the model classes (``comfy.model_base``,
``comfy.model_sampling``, ``comfy.supported_models``). Everything else the pack
touches (a private name, a module's inner structure or an object's attributes beyond those methods, a helper of
another node's file, a call protocol) is an `Internal` below, used only by the modules in this folder. The model
classes are public for ``isinstance`` checks only.

Each internal is detected by feature, never by version string: a probe reads the symbol's signature or the
names its code reads (``__code__.co_names``) and says what differs from what the pack's use assumes. Probes are
cheap (no model, no tensor), so every node runs the ones it needs before any work (`require`) and refuses with
the ComfyUI version, the symbol and what to do, instead of failing later with a traceback from inside ComfyUI.
tests/host/test_host_contract.py exercises each symbol the way the pack uses it (the `guard` named here).
"""
from __future__ import annotations

import importlib
import inspect
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# The ComfyUI releases the host tier has passed on: the CI hosts (.ci/hosts; a core test checks they are all
# here) and the newest trees run by hand. A refusal names the newest of these as the release known to work.
CHECKED_RELEASES = ("0.3.52", "0.3.75", "0.8.0", "0.33.0")

# What a node needs, by use; `require` takes these names.
TOKENS = "tokens"                  # tokenize and encode prompts holding learned words
TEXT_TRAINING = "text_training"    # Stage 1: gradients through the text encoders
FLUX_TEXT_TRAINING = "flux_text_training"  # Stage 1 on FLUX.1: gradients through T5 too
TRAINING = "training"              # both stages: training clones of frozen host models
FLUX_TRAINING = "flux_training"    # either stage on FLUX.1
QWEN3_TEXT_TRAINING = "qwen3_text_training"  # Stage 1 on Z-Image / FLUX.2 Klein: gradients through Qwen3
TRAINING_SWITCH = "training_switch"  # either stage on Z-Image / FLUX.2 Klein: the host's in_training switch
CHECKPOINTING = "checkpointing"    # gradient checkpointing on
LORA = "lora"                      # Stage 2: trainable adapters and their names in LoRA files
SCORING = "scoring"                # CLIP-T and CLIP-I (Concept Score, the sweep)
DINO = "dino"                      # the DINO metric, where a DINOv2 model is connected
LINKS = "links"                    # Load Concept Set's link-type check, where an input is linked
USES = (TOKENS, TEXT_TRAINING, FLUX_TEXT_TRAINING, TRAINING, FLUX_TRAINING, QWEN3_TEXT_TRAINING, TRAINING_SWITCH,
        CHECKPOINTING, LORA, SCORING, DINO, LINKS)
# The modules a ComfyUI install's own symbols live in: a symbol found elsewhere was replaced by another custom node.
HOST_PACKAGES = ("comfy", "comfy_extras", "comfy_execution", "comfy_api", "nodes", "node_helpers", "folder_paths")


class HostContractError(RuntimeError):
    """A ComfyUI internal the node needs is not as the pack expects (message: version, symbol, what to do)."""


@dataclass(frozen=True)
class Internal:
    """One host internal: its dotted `symbol`, why the pack uses it, the uses that need it, the guard test
    (a function in tests/host/test_host_contract.py) and the probe (None when as expected, else what differs)."""

    symbol: str
    why: str
    uses: frozenset[str]
    guard: str
    probe: Callable[[], str | None]


def _resolve(symbol: str) -> Any:
    """The object at dotted `symbol` (module path, then attributes). Raises ImportError/AttributeError."""
    parts = symbol.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            value = getattr(value, attribute)
        return value
    raise ImportError(f"no module for {symbol}")


def _names_read(function: Any) -> set[str]:
    """Global and attribute names `function`'s code reads or writes (``co_names``), nested code included."""
    code = getattr(inspect.unwrap(function), "__code__", None)
    if code is None:
        return set()
    names, stack = set(), [code]
    while stack:
        current = stack.pop()
        names |= set(current.co_names)
        stack += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    return names


def _binds(function: Any, *args: Any, **kwargs: Any) -> str | None:
    """None when `function` accepts this call form, else why not."""
    try:
        inspect.signature(function).bind(*args, **kwargs)
    except TypeError as error:
        return f"it no longer takes the call ({error})"
    except ValueError:
        return None  # no signature to read (a builtin): nothing to say against it
    return None


def _missing(names: Iterable[str], present: set[str], where: str) -> str | None:
    absent = sorted(set(names) - present)
    return f"{where} no longer sets or reads {', '.join(absent)}" if absent else None


def _forward_reads_exactly(cls_symbol: str, expected: set[str]) -> Callable[[], str | None]:
    """Probe: the class's forward reads exactly `expected` submodules, so the pack's out-of-place rewrite of it
    (out_of_place.py) still computes what the host's does."""
    def probe() -> str | None:
        read = _names_read(_resolve(cls_symbol).forward)
        if read != expected:
            return (f"its forward now reads {sorted(read)} where the pack's out-of-place rewrite computes "
                    f"{sorted(expected)}")
        return None
    return probe


def _probe_load_embed() -> str | None:
    import comfy.sd1_clip
    from .embedding_lookup import host_load_embed
    problem = _binds(host_load_embed(), "name", None, 768, "clip_l")
    if problem:
        return problem
    callers = [name for name, f in vars(comfy.sd1_clip.SDTokenizer).items()
               if callable(f) and "load_embed" in _names_read(f)]
    return None if callers else "SDTokenizer no longer looks embedding names up through it"


def _probe_tokenizer() -> str | None:
    import comfy.sd1_clip
    tokenizer = comfy.sd1_clip.SDTokenizer
    return (_missing(("embedding_directory", "embedding_key", "embedding_size", "tokens_start",
                      "tokenizer_adds_end_token", "max_length", "tokenizer"), _names_read(tokenizer.__init__),
                     "SDTokenizer.__init__")
            or _binds(tokenizer.tokenize_with_weights, None, "text", False))  # tokenizer_options only when set


def _probe_clip_model() -> str | None:
    import comfy.sd1_clip
    model = comfy.sd1_clip.SDClipModel
    absent = [m for m in ("encode_token_weights", "reset_clip_options", "set_clip_options", "process_tokens")
              if not callable(getattr(model, m, None))]
    if absent:
        return f"SDClipModel has no {', '.join(absent)}"
    return _missing(("layer", "projected_pooled"), {k for k in _strings_in(model.set_clip_options)},
                    "SDClipModel.set_clip_options")


def _strings_in(function: Any) -> set[str]:
    code = inspect.unwrap(function).__code__
    return {c for c in code.co_consts if isinstance(c, str)}


def _probe_clip_object() -> str | None:
    import comfy.sd
    return _missing(("tokenizer_options", "layer_idx", "cond_stage_model", "patcher", "tokenizer"),
                    _names_read(comfy.sd.CLIP.__init__) | _names_read(comfy.sd.CLIP.clone), "comfy.sd.CLIP")


def _probe_flux_blocks() -> str | None:
    from .out_of_place import FLUX_RESIDUAL_NORMS, FLUX_STREAMS
    for name, streams in FLUX_STREAMS.items():
        block = _resolve(f"comfy.ldm.flux.layers.{name}")
        first = list(inspect.signature(block.forward).parameters)[1:1 + len(streams)]
        if tuple(first) != streams:
            return f"{name}.forward now starts with {first}, not the residual streams {list(streams)}"
        if not set(FLUX_RESIDUAL_NORMS) & _names_read(block.__init__):
            return f"{name} has none of the residual-stream norms {list(FLUX_RESIDUAL_NORMS)}"
    return None


def _probe_flux_rope() -> str | None:
    import comfy.ldm.flux.math as flux_math
    problem = _binds(flux_math.apply_rope, "q", "k", "pe")
    if problem:
        return problem
    # Up to 0.3.5x attention applies RoPE inline in plain torch (differentiable; nothing to replace); later
    # releases call apply_rope. Another RoPE function would be one the pack does not replace.
    other = sorted(n for n in _names_read(flux_math.attention) if "rope" in n.lower() and n != "apply_rope")
    return f"FLUX attention now applies RoPE through {other}" if other else None


def _probe_flux_guidance() -> str | None:
    import comfy.ldm.flux.model as flux_model
    fields = getattr(flux_model.FluxParams, "__dataclass_fields__", {})
    if "guidance_embed" in fields or "guidance_in" in _names_read(flux_model.Flux.__init__):
        return None
    return "FLUX's transformer has neither params.guidance_embed nor guidance_in"


# What Qwen3's block (comfy/text_encoders/llama.py TransformerBlock) reads: its four sub-modules, and in
# ComfyUI 0.33.0 torch.add for the residual it writes into its input (the pack's rewrite adds out of place).
QWEN3_BLOCK_MODULES = {"self_attn", "input_layernorm", "mlp", "post_attention_layernorm"}


def _probe_qwen3_block() -> str | None:
    import comfy.text_encoders.llama as llama
    read = _names_read(llama.TransformerBlock.forward)
    unexpected = read - QWEN3_BLOCK_MODULES - {"torch", "add"}
    if not QWEN3_BLOCK_MODULES <= read or unexpected:
        return (f"its forward now reads {sorted(read)} where the pack's out-of-place rewrite computes "
                f"{sorted(QWEN3_BLOCK_MODULES)}")
    return None


def _probe_training_switch() -> str | None:
    import comfy.ldm.lumina.model as lumina
    import comfy.model_management as mm
    # Z-Image's attention may run q/k norm + RoPE in comfy-kitchen's fused kernel (no backward); the releases that
    # do (0.33.0) take the plain path while in_training is set, the ones before compute it in plain torch.
    read = _names_read(lumina.JointAttention.forward)
    fused = {n for n in read if n in ("ck", "rms_rope", "rms_rope1", "quant_ops")}
    if not fused:
        return None
    if "in_training" not in read or not isinstance(getattr(mm, "in_training", None), bool):
        return f"Z-Image attention calls comfy-kitchen's fused kernels ({sorted(fused)}) without the in_training switch"
    return None


def _probe_checkpointing() -> str | None:
    import comfy_extras.nodes_train as nodes_train
    absent = [n for n in ("find_all_highest_child_module_with_forward", "patch") if not callable(getattr(nodes_train, n, None))]
    return f"comfy_extras.nodes_train has no {', '.join(absent)}" if absent else _binds(nodes_train.patch, None)


def _probe_weight_wrappers() -> str | None:
    import comfy.model_patcher
    import comfy.ops
    patcher = comfy.model_patcher.ModelPatcher
    absent = [m for m in ("add_weight_wrapper", "set_model_compute_dtype", "clone") if not callable(getattr(patcher, m, None))]
    if absent:
        return f"ModelPatcher has no {', '.join(absent)}"
    if "backup" not in _names_read(patcher.__init__):
        return "ModelPatcher no longer keeps a weight backup"
    cast = _names_read(comfy.ops.cast_bias_weight)
    return None if "weight_function" in cast else "comfy.ops.cast_bias_weight no longer applies weight functions"


def _probe_dynamic_clone() -> str | None:
    import comfy.model_patcher
    import comfy.sd
    patcher = comfy.model_patcher.ModelPatcher
    if not callable(getattr(patcher, "clone", None)) or not callable(getattr(comfy.sd.CLIP, "clone", None)):
        return "ModelPatcher or CLIP has no clone"
    if not hasattr(patcher, "is_dynamic"):
        return None  # a host without dynamic VRAM: nothing to reload
    return _binds(patcher.clone, None, disable_dynamic=True) or _binds(comfy.sd.CLIP.clone, None, disable_dynamic=True)


def _probe_move_protocol() -> str | None:
    import comfy.model_patcher
    return None if "move_to" in _names_read(comfy.model_patcher.move_weight_functions) else \
        "the loader no longer moves weight functions with their move_to"


def _probe_lora_adapters() -> str | None:
    from comfy.weight_adapter import LoRAAdapter
    from comfy.weight_adapter.lora import LoraDiff  # noqa: F401 (the trainable adapter's class)
    return (_binds(LoRAAdapter.create_train, None, rank=4, alpha=4.0)
            or _binds(LoRAAdapter.load, "name", {}, 1.0, None, set())
            or (None if callable(getattr(LoRAAdapter, "to_train", None)) else "LoRAAdapter has no to_train"))


def _probe_lora_keys() -> str | None:
    import comfy.lora
    import comfy.utils
    return (_binds(comfy.lora.model_lora_keys_unet, None, {})
            or _binds(comfy.utils.flux_to_diffusers, {}, output_prefix="diffusion_model."))


def _probe_dtype_choice() -> str | None:
    import comfy.model_management as mm
    import comfy.supported_models_base
    if not hasattr(comfy.supported_models_base.BASE, "supported_inference_dtypes"):
        return "model configs no longer list supported_inference_dtypes"
    return (_binds(mm.should_use_fp16, None, prioritize_performance=False)
            or _binds(mm.should_use_bf16, None, prioritize_performance=False))


def _probe_flux_identity() -> str | None:
    import comfy.supported_models
    image_model = getattr(comfy.supported_models.Flux, "unet_config", {}).get("image_model")
    return None if image_model == "flux" else f"FLUX.1's config now names its image model {image_model!r}, not 'flux'"


def _probe_conds() -> str | None:
    import comfy.conds
    return None if "cond" in _names_read(comfy.conds.CONDRegular.__init__) else "CONDRegular no longer holds .cond"


def _probe_clip_vision() -> str | None:
    import comfy.clip_model
    # return_all_hidden_states marks SigLIP on the releases that load it (not 0.3.52, which has none to mark);
    # what must hold everywhere is the CLIP vision model's projection, which CLIP-I reads.
    return _missing(("visual_projection",), _names_read(comfy.clip_model.CLIPVisionModelProjection.__init__),
                    "CLIPVisionModelProjection.__init__")


def _probe_image_encoders() -> str | None:
    import comfy.clip_vision
    encoders = getattr(comfy.clip_vision, "IMAGE_ENCODERS", None)
    return None if isinstance(encoders, dict) and "dinov2" in encoders else "it no longer names a dinov2 encoder"


def _probe_validate_node_input() -> str | None:
    from comfy_execution.validation import validate_node_input
    return _binds(validate_node_input, "IMAGE", "IMAGE")


def _uses(*names: str) -> frozenset[str]:
    return frozenset(names)


INTERNALS: tuple[Internal, ...] = (
    Internal("comfy.sd1_clip.load_embed", "to answer learned words (embedding:prism_target) with placeholder rows "
             "while a prompt is tokenized, so the host parses them as it parses embedding names", _uses(TOKENS),
             "test_load_embed", _probe_load_embed),
    Internal("comfy.sd1_clip.SDTokenizer", "to read its fields (embedding key and directory, start and end tokens, "
             "chunk length, BPE tokenizer): captions as plain text, each encoder's key",
             _uses(TOKENS), "test_sd_tokenizer", _probe_tokenizer),
    Internal("comfy.sd1_clip.SDClipModel", "to encode through encode_token_weights and the clip options, with "
             "grad and without a reload per step (projected_pooled: Concept Score's text embedding)",
             _uses(TOKENS, SCORING), "test_sd_clip_model", _probe_clip_model),
    Internal("comfy.sd.CLIP", "to read tokenizer_options, layer_idx, cond_stage_model and patcher: "
             "the settings and modules a CLIP encodes with", _uses(TOKENS, SCORING), "test_clip_object",
             _probe_clip_object),
    Internal("comfy.clip_model.CLIPLayer", "to give it an out-of-place forward while training: its in-place "
             "residual add breaks backward", _uses(TEXT_TRAINING), "test_clip_layer",
             _forward_reads_exactly("comfy.clip_model.CLIPLayer", {"self_attn", "layer_norm1", "mlp", "layer_norm2"})),
    Internal("comfy.text_encoders.t5.T5LayerFF", "to give it an out-of-place forward while training (FLUX.1's T5)",
             _uses(FLUX_TEXT_TRAINING), "test_t5_layers",
             _forward_reads_exactly("comfy.text_encoders.t5.T5LayerFF", {"layer_norm", "DenseReluDense"})),
    Internal("comfy.text_encoders.t5.T5LayerSelfAttention", "to give it an out-of-place forward while training (FLUX.1's T5)",
             _uses(FLUX_TEXT_TRAINING), "test_t5_layers",
             _forward_reads_exactly("comfy.text_encoders.t5.T5LayerSelfAttention", {"layer_norm", "SelfAttention"})),
    Internal("comfy.supported_models.Flux.unet_config", "to tell FLUX.1 (image_model 'flux') from FLUX.2 and "
             "other Flux-derived models", _uses(TRAINING), "test_flux_identity", _probe_flux_identity),
    Internal("comfy.conds.CONDRegular.cond", "to read the tensors extra_conds wraps: the model inputs a training "
             "step passes to apply_model", _uses(TRAINING), "test_model_inputs", _probe_conds),
    Internal("comfy.ldm.flux.layers.DoubleStreamBlock / SingleStreamBlock", "to run them and their norms on copies of "
             "the residual streams while training: the blocks add in place", _uses(FLUX_TRAINING), "test_flux_blocks",
             _probe_flux_blocks),
    Internal("comfy.ldm.flux.math.apply_rope", "to put a plain-torch RoPE in its place while "
             "training: comfy-kitchen's op has no backward", _uses(FLUX_TRAINING), "test_flux_rope", _probe_flux_rope),
    Internal("comfy.ldm.flux.model.FluxParams.guidance_embed", "to tell whether FLUX.1 reads the guidance input "
             "(dev) or not (schnell)", _uses(FLUX_TRAINING), "test_flux_guidance", _probe_flux_guidance),
    Internal("comfy.text_encoders.llama.TransformerBlock", "to give Qwen3's blocks (Z-Image's and FLUX.2 Klein's text encoder) an "
             "out-of-place forward while training: 0.33.0's adds its MLP residual into its input",
             _uses(QWEN3_TEXT_TRAINING), "test_qwen3_block", _probe_qwen3_block),
    Internal("comfy.model_management.in_training", "to switch Z-Image's and FLUX's RoPE and q/k norm from "
             "comfy-kitchen's fused kernels, which have no backward, to the host's plain-torch path while training",
             _uses(TRAINING_SWITCH), "test_training_switch", _probe_training_switch),
    Internal("comfy_extras.nodes_train.find_all_highest_child_module_with_forward / patch", "to checkpoint the "
             "top-level blocks (and the text encoders' layers) as the host's Train LoRA node does", _uses(CHECKPOINTING), "test_checkpointing_helpers",
             _probe_checkpointing),
    Internal("comfy.model_patcher.ModelPatcher.add_weight_wrapper", "to give training clones weight wrappers "
             "(copies of inference-tensor weights, LoRA adapters) and a compute dtype, applied by comfy.ops.cast_bias_weight",
             _uses(TRAINING), "test_weight_wrappers", _probe_weight_wrappers),
    Internal("comfy.model_patcher.ModelPatcher.clone(disable_dynamic=True)", "to get a fully loaded copy of a model "
             "the dynamic-VRAM loader streams", _uses(TRAINING), "test_dynamic_clone", _probe_dynamic_clone),
    Internal("comfy.model_patcher.move_weight_functions", "to have the loader move trainable adapters with "
             "the weights they patch (their move_to)", _uses(LORA), "test_move_protocol", _probe_move_protocol),
    Internal("comfy.weight_adapter.LoRAAdapter", "to make, load and train the host's own LoRA adapters",
             _uses(LORA), "test_lora_adapters", _probe_lora_adapters),
    Internal("comfy.lora.model_lora_keys_unet / comfy.utils.flux_to_diffusers", "to name every adapted layer as "
             "LoraLoader maps it", _uses(LORA), "test_lora_keys", _probe_lora_keys),
    Internal("comfy.model_management.should_use_fp16 / should_use_bf16", "to pick training_dtype auto: the dtype "
             "the host would run the model in on this card", _uses(TRAINING), "test_dtype_choice", _probe_dtype_choice),
    Internal("comfy.clip_vision.IMAGE_ENCODERS", "to tell a DINOv2 CLIP_VISION from a CLIP one", _uses(DINO),
             "test_image_encoders", _probe_image_encoders),
    Internal("comfy.clip_model.CLIPVisionModelProjection", "to tell a CLIP vision model (its visual_projection) "
             "from SigLIP (return_all_hidden_states, where the host loads SigLIP) for CLIP-I", _uses(SCORING),
             "test_image_encoders", _probe_clip_vision),
    Internal("comfy_execution.validation.validate_node_input", "to check link types as the host does, for Load "
             "Concept Set's first-run message", _uses(LINKS), "test_validate_node_input", _probe_validate_node_input),
)


def training_uses(stage: int, checkpointing: bool) -> tuple[str, ...]:
    """The uses a training node needs before it reads its model: Stage 1 (`stage` 1) trains through the text
    encoders, Stage 2 trains LoRA adapters; gradient checkpointing adds its own. A FLUX.1, Z-Image or FLUX.2 Klein model adds
    `family_uses`, asked once the family is known."""
    return (TOKENS, TRAINING, TEXT_TRAINING if stage == 1 else LORA, *((CHECKPOINTING,) if checkpointing else ()))


def family_uses(family: str, stage: int) -> tuple[str, ...]:
    """What a model family (family.ModelFamily.name) adds: FLUX.1 its blocks and RoPE, and in Stage 1 its T5;
    Z-Image the training switch, and in Stage 1 its Qwen3 blocks; FLUX.2 Klein both FLUX's and the Qwen3 ones;
    SD nothing."""
    if family == "flux1":
        return (FLUX_TRAINING, FLUX_TEXT_TRAINING) if stage == 1 else (FLUX_TRAINING,)
    if family == "zimage":
        return (TRAINING_SWITCH, QWEN3_TEXT_TRAINING) if stage == 1 else (TRAINING_SWITCH,)
    if family == "klein":  # FLUX.2's blocks and RoPE are FLUX.1's classes; its encoder is Qwen3
        return (FLUX_TRAINING, TRAINING_SWITCH, QWEN3_TEXT_TRAINING) if stage == 1 else (FLUX_TRAINING, TRAINING_SWITCH)
    return ()


def comfyui_version() -> str:
    """The running ComfyUI's version (its comfyui_version module), or "unknown"."""
    try:
        return str(importlib.import_module("comfyui_version").__version__)
    except (ImportError, AttributeError):
        return "unknown"


def _owner(symbol: str) -> str | None:
    """The module another custom node put in place of `symbol` (its first name), or None when the object there is
    the host's own (or cannot be read)."""
    try:
        value = _resolve(symbol.split(" / ")[0].split("(")[0])
    except Exception:  # noqa: BLE001 - a symbol that is gone has no owner to name
        return None
    candidates = [value]
    if inspect.isclass(value):  # a class of the host's with a method another node replaced
        candidates += [f for f in vars(value).values() if inspect.isfunction(f)]
    for candidate in candidates:
        module = getattr(inspect.unwrap(candidate) if callable(candidate) else candidate, "__module__", None)
        if isinstance(module, str) and module.split(".")[0] not in HOST_PACKAGES:
            return module
    return None


def problems(*uses: str) -> list[tuple[Internal, str]]:
    """(internal, what differs) for every internal these uses need whose probe finds it changed; a probe that
    cannot even read its symbol reports that, whatever it raised, so a node refuses instead of failing."""
    unknown = set(uses) - set(USES)
    if unknown:
        raise ValueError(f"unknown uses {sorted(unknown)}; known: {USES}")
    found = []
    for internal in INTERNALS:
        if not internal.uses & set(uses):
            continue
        try:
            problem = internal.probe()
        except (ImportError, AttributeError) as error:
            problem = f"it is gone ({type(error).__name__}: {error})"
        except Exception as error:  # noqa: BLE001 - anything else: it could not be checked, so it is not as expected
            problem = f"it could not be checked ({type(error).__name__}: {error})"
        if problem:
            owner = _owner(internal.symbol)
            found.append((internal, f"{problem} (here it comes from {owner}, another custom node)" if owner else problem))
    return found


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def advice(version: str, replaced: bool) -> str:
    """What to do, for a refusal on ComfyUI `version`; `replaced`: another custom node replaced a symbol."""
    checked = f"ComfyUI {CHECKED_RELEASES[0]} to {CHECKED_RELEASES[-1]}"
    if replaced:
        return ("Another custom node replaced it: update that node, or disable it while you train "
                f"(this ConceptPrism was checked on {checked}).")
    if version != "unknown" and _release(version) < _release(CHECKED_RELEASES[0]):
        return f"Update ComfyUI: this ConceptPrism was checked on {checked}."
    if version in CHECKED_RELEASES:
        return (f"This ComfyUI {version} differs from the released {version} (a modified install or a fork?): "
                "reinstall ComfyUI, or update ConceptPrism (ComfyUI-Manager: Update).")
    return (f"Update ConceptPrism (ComfyUI-Manager: Update); until a version for ComfyUI {version} is out, run ComfyUI "
            f"{CHECKED_RELEASES[-1]}, the newest release this version was checked on ({checked}).")


def refusal(node: str, found: list[tuple[Internal, str]]) -> str:
    """The message a node refuses with: ComfyUI version, each changed symbol, what to do."""
    version = comfyui_version()
    lines = [f"ConceptPrism {node} cannot run on ComfyUI {version}: "
             f"{'an internal' if len(found) == 1 else 'internals'} of ComfyUI it relies on changed."]
    lines += [f"- {internal.symbol}, which ConceptPrism uses {internal.why}: {problem}." for internal, problem in found]
    replaced = any("another custom node)" in problem for _, problem in found)
    lines.append(f"Nothing was trained or written. {advice(version, replaced)}")
    return "\n".join(lines)


def validation_answer(node: str, *uses: str) -> bool | str:
    """For a node's VALIDATE_INPUTS: True, or the refusal, so a changed internal is refused when the graph is
    validated, before upstream nodes load models (the node's run-time `require` still asks what its model adds)."""
    found = problems(*uses)
    return refusal(node, found) if found else True


def require(node: str, *uses: str) -> None:
    """Refuse before any work when an internal that `uses` need is not as expected.
    Raises HostContractError with `refusal`'s message."""
    found = problems(*uses)
    if found:
        raise HostContractError(refusal(node, found))
