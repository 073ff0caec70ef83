"""A full-size SD1.5-shaped checkpoint file with random weights, for trying the pack where no real one may be used.

    COMFYUI_PATH=<ComfyUI> python tests/host/frontend/sd15_checkpoint.py <ComfyUI>/models/checkpoints/sd15_random.safetensors

Built with the host's own classes at SD1.5's real sizes (UNet model_channels 320, channel_mult
[1, 2, 4, 4]; the 12-layer 768-wide CLIP-L; the 128-channel VAE: the shapes the host's detection
needs to call a file SD1.5: comfy/model_detection.py reads them from the weights) and written by the host's own checkpoint layout
(`state_dict_for_saving`), in float16 (about 2 GB). Weights are random (comfy ops skip
initialisation, so they are set here: N(0, 1/fan_in) matrices, unit norms, small biases): it draws
noise, but every shape, key and code path is a real checkpoint's.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

from pictures import require_host  # noqa: E402  (no pytest needed)

VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def _initialise(module, generator) -> None:
    import torch
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def write(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint to `path` (never over an existing file); returns it."""
    require_host()
    import torch
    import comfy.model_base
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import comfy.utils

    if path.exists():
        raise FileExistsError(f"{path} exists; choose another name")
    generator = torch.Generator().manual_seed(seed)
    config = comfy.supported_models.SD15({
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False})
    config.set_inference_dtype(torch.float32, None)
    unet = comfy.model_base.BaseModel(config)
    _initialise(unet.diffusion_model, generator)
    clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel))
    _initialise(clip.cond_stage_model, generator)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # the host warns about every key of the (deliberately) empty state dict
    try:
        vae = comfy.sd.VAE(sd={}, config={"params": {"ddconfig": VAE_DDCONFIG, "embed_dim": 4}}, dtype=torch.float32)
    finally:
        logger.setLevel(level)
    _initialise(vae.first_stage_model, generator)
    state = unet.state_dict_for_saving(clip.get_sd(), vae.get_sd())
    state = {k: v.to(torch.float16).contiguous() if v.is_floating_point() else v.contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    comfy.utils.save_torch_file(state, str(partial))
    partial.rename(path)
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {len(state)} tensors)")
    return path


if __name__ == "__main__":
    write(Path(sys.argv[1]))
