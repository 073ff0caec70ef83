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
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end at this step of the --steps schedule and write --out there (default: --steps)")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--out", type=Path, default=host.ARTIFACTS / "world_model.safetensors")
    parser.add_argument("--resume", type=Path, default=None, help="start from this world-model file's weights (a new schedule)")
    parser.add_argument("--min-snr-gamma", type=float, default=0.0, help="Min-SNR loss weighting min(1, gamma*sigma^2); 0 = uniform")
    parser.add_argument("--low-frequency-noise", type=float, default=0.0,
                        help="strength of the extra per-channel constant and 4x4 noise added to the training noise; 0 = plain")
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    split = data.load_split("world_train")
    ae = load_autoencoder(data.CACHE / "vae.safetensors")
    base = world_model.new_unet(args.seed)
    clip = world_model.new_clip(args.seed + 1)
    history: list[dict] = []
    if args.resume is not None:
        resume_weights(args.resume, base, clip)
        previous = world_model.world_info(args.resume)
        history = previous.pop("history", []) + [previous]
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
    last = final_step(args)
    for step in range(1, last + 1):
        index = torch.from_numpy(rng.integers(0, len(latents), args.batch))
        pick = torch.from_numpy(rng.random(args.batch))
        ids = torch.where((pick < world.POSITION_DROP).unsqueeze(1), without_position[index], with_position[index])
        ids[pick > 1 - CAPTION_DROP] = empty
        x0 = latents[index]
        t = torch.from_numpy(rng.integers(0, len(sigmas), args.batch))
        sigma = sigmas[t].view(-1, 1, 1, 1)
        noise = training_noise(x0, args.low_frequency_noise)
        # BaseModel.apply_model for eps models: input x = x0 + sigma*eps scaled by 1/sqrt(sigma^2+1), output eps.
        x_in = base.model_sampling.calculate_input(sigma, x0 + sigma * noise)
        context = encoder(ids.tolist())[0]
        eps = unet(x_in, t.float(), context=context)
        per_sample = (eps - noise).pow(2).mean(dim=(1, 2, 3))
        if args.min_snr_gamma > 0:
            # Min-SNR-gamma (Hang et al. 2023) for eps targets: weight min(SNR, gamma)/SNR with SNR = 1/sigma^2.
            # It down-weights the low-noise steps, where the loss is mostly fine detail, so the model's
            # capacity goes to layout and colour first: those decide the attributes this eval measures.
            per_sample = per_sample * torch.clamp(args.min_snr_gamma * sigma.view(-1) ** 2, max=1.0)
        loss = per_sample.mean()
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
        if step % args.save_every == 0 or step == last:
            save(args, ema, ae, step, losses, time.time() - started, history)


def final_step(args: argparse.Namespace) -> int:
    """The step the run ends at and writes --out: --stop-after within the --steps schedule, else --steps."""
    return args.stop_after or args.steps


def training_noise(x0: torch.Tensor, low_frequency: float) -> torch.Tensor:
    """eps [B, 4, 16, 16]: white noise plus, when `low_frequency` > 0, a per-channel constant and a
    bilinearly upsampled 4x4 field of that strength (offset noise, Guttenberg 2023; one pyramid level).

    Why: on a 16x16 latent the spatial mean of white noise has std 1/16, so at SD1's last step
    (sigma 14.6) the image's mean colour is still half-visible in x_T (non-zero terminal SNR). A model
    trained on that reads the background colour from the noise instead of from the caption, and at
    sampling time, where x_T carries no image, draws a random background. Noise with more power at
    low frequencies hides the mean and the coarse layout at high sigma, so the caption must supply them."""
    noise = torch.randn_like(x0)
    if low_frequency > 0:
        batch, channels, height, width = x0.shape
        coarse = torch.nn.functional.interpolate(torch.randn(batch, channels, 4, 4), size=(height, width), mode="bilinear",
                                                 align_corners=False)
        noise = noise + low_frequency * (torch.randn(batch, channels, 1, 1) + coarse)
    return noise


def resume_weights(path: Path, base, clip) -> None:
    """Load a world-model file's UNet and text-encoder weights into freshly built training objects."""
    sd = {k: v.float() for k, v in comfy.utils.load_torch_file(str(path)).items()}
    base.load_model_weights(sd, "model.diffusion_model.")
    clip_sd = world_model.model_config().process_clip_state_dict(dict(sd))
    missing, _ = clip.cond_stage_model.load_state_dict(clip_sd, strict=False)
    assert all("text_projection" in k or "logit_scale" in k for k in missing), missing


def save(args, ema: EMA, ae: PatchAutoencoder, step: int, losses: list[float], seconds: float, history: list[dict]) -> None:
    """Write the EMA weights as a world-model file (the final one to args.out, earlier ones to the cache).
    `history`: the records of the runs this one resumed from (oldest first)."""
    info = {"steps": step, "schedule_steps": args.steps, "min_snr_gamma": args.min_snr_gamma, "low_frequency_noise": args.low_frequency_noise, "resumed_from": str(args.resume) if args.resume else None,
            "batch": args.batch, "lr": args.lr, "warmup": args.warmup, "ema": args.ema, "seed": args.seed,
            "caption_drop": CAPTION_DROP, "frozen_text": list(FROZEN_TEXT), "train_split": list(data.SPLITS["world_train"]),
            "loss_last_200": float(np.mean(losses[-200:])),
            "loss_curve_every_50": [round(float(np.mean(losses[i:i + 50])), 5) for i in range(0, len(losses), 50)],
            "train_seconds": round(seconds), "held_out_pairs": sorted(map(list, world.HELD_OUT_PAIRS)), "history": history}
    path = args.out if step == final_step(args) else data.CACHE / f"{args.out.stem}_step{step:05}.safetensors"
    world_model.save_world_model(path, ema.shadow["unet"].state_dict(), ema.shadow["text"].state_dict(), ae.state_dict(), info)
    print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()
