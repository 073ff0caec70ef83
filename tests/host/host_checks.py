"""Host-only oracles and snapshots shared by the host tests (no pack code in here)."""
from __future__ import annotations

import torch

import comfy.model_sampling
import comfy.sample

RES = 64
WORD = "<|vision_pad|>"  # Z-Image and Klein oracles' stand-in for a learned word: one of Qwen's special tokens, kept whole


def host_outputs(model, clip, seed: int = 5):
    """(cond, pooled, sample): text encoding and sampling through the host's own paths (what any later
    node would see)."""
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a red ball"))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        latent = torch.zeros(1, model.model.latent_format.latent_channels, RES // 8, RES // 8)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        sample = comfy.sample.sample(model, noise, 3, 4.0, "euler", "normal", positive, negative, latent,
                                     seed=seed, disable_pbar=True)
    return positive[0][0].clone(), positive[0][1]["pooled_output"], sample.clone()


def module_state(root: torch.nn.Module) -> dict:
    """Every module's type, instance attributes, parameter identities and weight/bias function lists."""
    return {name: (type(m), sorted(m.__dict__.keys()), [id(p) for p in m._parameters.values()],
                   list(getattr(m, "weight_function", [])), list(getattr(m, "bias_function", [])))
            for name, m in root.named_modules()}


def oracle_cond(models, prompt: str, model=None):
    """Conditioning exactly as CLIPTextEncode + the sampler would build it (host code only)."""
    model = model or models.model
    cond, pooled = models.clip.encode_from_tokens(models.clip.tokenize(prompt), return_pooled=True)
    extra = {}
    if models.family == "sdxl":
        extra["y"] = model.model.encode_adm(pooled_output=pooled, width=RES, height=RES,
                                            target_width=RES, target_height=RES, crop_w=0, crop_h=0)
    return cond, extra


def oracle_eps(model, z, sigma, eps, cond, extra):
    """eps_hat from apply_model's x0_hat with the host's noise_scaling (x_t = z + sigma * eps for eps and
    v models)."""
    sampling = model.get_model_object("model_sampling")
    x_t = sampling.noise_scaling(sigma, eps, z)
    x0 = model.model.apply_model(x_t, sigma, c_crossattn=cond, **extra)
    return (x_t - x0) / sigma.view(-1, 1, 1, 1)


def oracle_native(model, z, sigma, eps, cond, extra):
    """(prediction, target) on the family's native target, from apply_model's x0_hat and the host's own
    noise_scaling, in DDPM's terms (alphabar = 1 / (1 + sigma^2) for these VP sigmas): eps models predict
    eps; v models predict v = sqrt(alphabar) * eps - sqrt(1 - alphabar) * x0 (both for the model's
    estimates and for the true (eps, x0))."""
    sampling = model.get_model_object("model_sampling")
    x_t = sampling.noise_scaling(sigma, eps, z)
    x0_hat = model.model.apply_model(x_t, sigma, c_crossattn=cond, **extra).float()
    s = sigma.view(-1, 1, 1, 1)
    eps_hat = (x_t - x0_hat) / s
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        alphabar = 1 / (1 + s ** 2)
        v = lambda e, x: alphabar.sqrt() * e - (1 - alphabar).sqrt() * x
        return v(eps_hat, x0_hat), v(eps, z)
    return eps_hat, eps


def stage2_run(model):
    """(family, LoRA targets) of `model` as a Stage 2 run decides them once: the family and targets arguments of
    ComfyStage2Backend for tests that drive the backend directly."""
    from comfyui_conceptprism.prism_core.host.family import describe
    from comfyui_conceptprism.prism_core.host.lora_targets import lora_targets
    family = describe(model, stage2=True)
    return family, lora_targets(model, family.lora)


def widget_defaults(node) -> dict:
    """{input name: default} of every widget of `node` (required and optional) that has one: the values a graph
    with untouched widgets sends."""
    widgets = node.INPUT_TYPES()
    return {k: v[1]["default"] for s in ("required", "optional") for k, v in widgets.get(s, {}).items() if "default" in v[1]}


def random_concept(n: int = 3, seed: int = 0, captions: tuple[str, ...] | None = None):
    """A concept set of `n` seeded random RES x RES images named 0.png, 1.png, ..., uncaptioned unless `captions`;
    the pixels are inference tensors, as upstream IMAGE tensors are in a real run."""
    from comfyui_conceptprism.prism_core.concept_input.concept_set import ConceptSet
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        images = torch.rand(n, RES, RES, 3, generator=g)
    return ConceptSet(images, tuple(f"{i}.png" for i in range(n)), captions or ("",) * n, RES, "test")


def llm_cond(clip, prompt: str, rows: list[torch.Tensor], key: str = "qwen3_4b"):
    """(cond [1, L, D], L): `prompt` (WORD where each learned word stands) through the host's own tokenizer and
    template (Z-Image's, FLUX.2 Klein's: the text encoder `key`), each WORD token replaced by the next of `rows`
    ([n, D] each: n vectors in its place) as the host takes embedding vectors in a token list, encoded by the
    host's encode_from_tokens; L counts the tokens the attention mask keeps."""
    tokens = clip.tokenize(prompt)
    word = getattr(clip.tokenizer, key).tokenizer.convert_tokens_to_ids(WORD)
    queue = iter(rows)
    chunk = []
    for token, weight, *rest in tokens[key][0]:
        if token == word:
            chunk += [(vector, weight, *rest) for vector in next(queue)]
        else:
            chunk.append((token, weight, *rest))
    out = clip.encode_from_tokens({key: [chunk]}, return_dict=True)
    return out["cond"], int(out["attention_mask"].sum()) if out.get("attention_mask") is not None else out["cond"].shape[1]


def stage2_flow_steps():
    """Two Stage 2 micro-steps on a flow model: image 1 at sigma 0.4 and image 2 at sigma 0.85 of the plan's 2^24-level
    grid (sigma = (k + 1) / 2^24), noise seeds 77 and 78."""
    from comfyui_conceptprism.prism_core.training.schedule import MicroStep
    grid = 2 ** 24
    return [MicroStep(1, (), (round(0.4 * grid) - 1,), 77), MicroStep(2, (), (round(0.85 * grid) - 1,), 78)]


def randomised_adapters(model, seed: int = 1, scale: float = 0.05, alpha: float = 2.0):
    """Stage 2's trainable adapters on `model` (rank 4) with seeded random up and down weights (not the zero-up start
    of training), so a LoRA's effect and gradient are not zero."""
    from comfyui_conceptprism.prism_core.host import lora_layers
    from comfyui_conceptprism.prism_core.host.lora_targets import stage2_targets
    adapters = lora_layers.trainable_adapters(stage2_targets(model), rank=4, alpha=alpha, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.lora_down.weight.copy_(torch.randn(adapter.lora_down.weight.shape, generator=g) * scale)
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * scale)
    return adapters


def stage2_losses(model, models, adapters, tokens, concept, checkpointing: bool = False, guidance: float | None = None):
    """(per-micro-step losses, trainable parameters with their gradients) of `stage2_flow_steps` on `model` with
    `adapters`, through the pack's Stage 2 backend; the text and VAE of `models`; `guidance` as the run passes it."""
    from comfyui_conceptprism.prism_core.host.diffusion import encode_latents, training_conditionings
    from comfyui_conceptprism.prism_core.host.internals.lora_adapters import trainable_parameters
    from comfyui_conceptprism.prism_core.host.stage2_backend import ComfyStage2Backend
    from comfyui_conceptprism.prism_core.training.stage2 import step_losses
    with torch.inference_mode(False):
        conds = training_conditionings(model, models.clip, tokens, RES, guidance)
        latents = encode_latents(model, models.vae, concept.images.clone())
        with ComfyStage2Backend(model, adapters, *stage2_run(model), max_batch=2, checkpointing=checkpointing) as backend:
            params = trainable_parameters(adapters)
            losses = step_losses(backend, latents, conds, stage2_flow_steps(), params)
    return losses, params
