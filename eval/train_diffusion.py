"""Build step 2: train the UNet and the text encoder (jointly, from scratch) on the world's captions.

Usage: python eval/train_diffusion.py [--steps N]
Reads artifacts/cache/vae.safetensors; writes artifacts/world_model.safetensors (EMA weights) and
checkpoints to artifacts/cache/ every --save-every steps.

Training is SD1's own objective on ComfyUI's objects: eps-prediction MSE with t ~ U{0..999} on the
model's discrete schedule (``model_sampling.sigmas``), the UNet input scaled by the schedule's
``calculate_input`` as ``BaseModel.apply_model`` does, 10% empty captions for classifier-free guidance.

The text encoder's token-embedding table stays frozen at its random N(0, 0.02) start; the position
embeddings, the transformer layers and the final norm train. Why: (a) every word of the world then
has an input vector drawn from the same distribution as the rest of the vocabulary, so the pack's
random target initialisation (per-dimension mean/std of the table) starts "like a word", as it does
in real CLIP; (b) a learned token starts at the scale the real words have. Only 30-odd of the 49408
rows would ever receive gradients, so nothing is lost.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import comfy.clip_model  # noqa: E402
import comfy.utils  # noqa: E402

import data  # noqa: E402
import world  # noqa: E402
import world_model  # noqa: E402
from autoencoder import PatchAutoencoder  # noqa: E402
from train_vae import to_model_input  # noqa: E402

CAPTION_DROP = 0.1  # share of empty captions (unconditional), for classifier-free guidance
FROZEN_TEXT = ("token_embedding.weight",)


def load_autoencoder(path: Path) -> PatchAutoencoder:
    ae = PatchAutoencoder()
    ae.load_state_dict(comfy.utils.load_torch_file(str(path)))
    return ae.eval()


@torch.no_grad()
def encode_split(ae: PatchAutoencoder, images: np.ndarray, latent_scale: float) -> torch.Tensor:
    """Latents in the model's space (``process_latent_in`` applied), float32 [N, 4, 16, 16]."""
    return torch.cat([ae.encode(to_model_input(images[s:s + 500])) for s in range(0, len(images), 500)]) * latent_scale


def token_ids(clip, texts: list[str]) -> torch.Tensor:
    """int64 [N, 77]: the host tokenizer's ids (start, words, end, end-padding), as CLIPTextEncode tokenizes."""
    return torch.tensor([[t for t, _ in clip.tokenize(text)["l"][0]] for text in texts], dtype=torch.long)


class EMA:
    """Exponential moving average of parameters (short training: the average samples far better)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = {name: copy.deepcopy(m).requires_grad_(False) for name, m in modules.items()}
        self.modules = modules

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, module in self.modules.items():
            for s, p in zip(self.shadow[name].parameters(), module.parameters()):
                s.lerp_(p, 1 - decay)


def out_of_place_residuals(encoder: torch.nn.Module) -> None:
    """Give each CLIPLayer the host's own arithmetic without its in-place residual adds (`x += ...`),
    which autograd rejects when the text encoder trains. Instance-level: the class stays untouched."""
    for module in encoder.modules():
        if isinstance(module, comfy.clip_model.CLIPLayer):
            def forward(x, mask=None, optimized_attention=None, layer=module):
                x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
                return x + layer.mlp(layer.layer_norm2(x))
            module.forward = forward


def trainable_text_parameters(clip) -> list[torch.nn.Parameter]:
    params = []
    for name, p in clip.cond_stage_model.named_parameters():
        train = not name.endswith(FROZEN_TEXT) and "text_projection" not in name and not name.endswith("logit_scale")
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=host.ARTIFACTS / "world_model.safetensors")
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    split = data.load_split("world_train")
    ae = load_autoencoder(data.CACHE / "vae.safetensors")
    base = world_model.new_unet(args.seed)
    clip = world_model.new_clip(args.seed + 1)
    latent_scale = float(base.latent_format.scale_factor)
    latents = encode_split(ae, split.images, latent_scale)
    with_position = token_ids(clip, [world.caption(s, True) for s in split.scenes])
    without_position = token_ids(clip, [world.caption(s, False) for s in split.scenes])
    empty = token_ids(clip, [""])[0]
    print(f"latents {tuple(latents.shape)} std {latents.std():.3f}; captions tokenized ({time.time() - started:.0f}s)", flush=True)

    unet, encoder = base.diffusion_model, clip.cond_stage_model.clip_l
    sigmas = base.model_sampling.sigmas.float()
    unet.train().requires_grad_(True)
    encoder.train()
    params = list(unet.parameters()) + trainable_text_parameters(clip)
    optimizer = torch.optim.Adam(params, lr=args.lr)
    ema = EMA({"unet": unet, "text": encoder}, args.ema)  # copies taken before the patch below: never run, only saved
    out_of_place_residuals(encoder)
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        index = torch.from_numpy(rng.integers(0, len(latents), args.batch))
        pick = torch.from_numpy(rng.random(args.batch))
        ids = torch.where((pick < world.POSITION_DROP).unsqueeze(1), without_position[index], with_position[index])
        ids[pick > 1 - CAPTION_DROP] = empty
        x0 = latents[index]
        t = torch.from_numpy(rng.integers(0, len(sigmas), args.batch))
        sigma = sigmas[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        # BaseModel.apply_model for eps models: input x = x0 + sigma*eps scaled by 1/sqrt(sigma^2+1), output eps.
        x_in = base.model_sampling.calculate_input(sigma, x0 + sigma * noise)
        context = encoder(ids.tolist())[0]
        eps = unet(x_in, t.float(), context=context)
        loss = torch.nn.functional.mse_loss(eps, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        lr = args.lr * min(1.0, step / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        ema.update(step)
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step}/{args.steps} loss {np.mean(losses[-50:]):.4f} lr {lr:.2e} ({time.time() - started:.0f}s)", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            save(args, ema, ae, step, losses, time.time() - started)


def save(args, ema: EMA, ae: PatchAutoencoder, step: int, losses: list[float], seconds: float) -> None:
    """Write the EMA weights as a world-model file (the final one to args.out, earlier ones to the cache)."""
    info = {"steps": step, "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "ema": args.ema, "seed": args.seed,
            "caption_drop": CAPTION_DROP, "frozen_text": list(FROZEN_TEXT), "train_split": list(data.SPLITS["world_train"]),
            "loss_last_200": float(np.mean(losses[-200:])),
            "loss_curve_every_50": [round(float(np.mean(losses[i:i + 50])), 5) for i in range(0, len(losses), 50)],
            "train_seconds": round(seconds), "held_out_pairs": sorted(map(list, world.HELD_OUT_PAIRS))}
    path = args.out if step == args.steps else data.CACHE / f"world_model_step{step:05}.safetensors"
    world_model.save_world_model(path, ema.shadow["unet"].state_dict(), ema.shadow["text"].state_dict(), ae.state_dict(), info)
    print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
