"""Build step 1: train the world's autoencoder, then standardise its latent.

Usage: python eval/train_vae.py [--steps N]   (writes artifacts/cache/vae.safetensors)

After training, the latent is standardised per channel (the autoencoder's shift/scale buffers) so
that ``model.process_latent_in(vae.encode(x))`` (x 0.18215, SD1's latent scale) has zero mean and
unit variance on the training images: the UNet sees latents at the scale its noise schedule was
designed for, as with SD1's own VAE.
"""
from __future__ import annotations

import argparse
import json
import time

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import comfy.utils  # noqa: E402

import data  # noqa: E402
from autoencoder import PatchAutoencoder  # noqa: E402

SD1_SCALE = 0.18215
LATENT_NOISE = 0.05  # relative latent noise in training: keeps the decoder robust to small sampling errors


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, 64, 64, 3] -> float [B, 3, 64, 64] in [-1, 1] (what comfy's VAE feeds its model)."""
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)


def train(ae: PatchAutoencoder, images: np.ndarray, steps: int, batch: int, lr: float, seed: int,
          log_every: int = 100) -> list[float]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(ae.parameters(), lr=lr)
    ae.train()
    losses, start = [], time.time()
    for step in range(1, steps + 1):
        x = to_model_input(images[rng.integers(0, len(images), batch)])
        z = ae.encoder(x)
        z = z + LATENT_NOISE * z.detach().std() * torch.randn_like(z)
        loss = torch.nn.functional.mse_loss(ae.decoder(z), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # cosine decay to 10%: a sharper codec in the same steps
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"vae step {step}/{steps} mse {np.mean(losses[-log_every:]):.5f} ({time.time() - start:.0f}s)", flush=True)
    ae.eval()
    return losses


@torch.no_grad()
def standardise(ae: PatchAutoencoder, images: np.ndarray) -> dict[str, list[float]]:
    """Set shift/scale so that SD1_SCALE * encode(x) has zero mean, unit std per channel."""
    raw = torch.cat([ae.encoder(to_model_input(images[s:s + 256])) for s in range(0, len(images), 256)])
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))
    ae.shift.copy_(mean.view(1, -1, 1, 1))
    ae.scale.copy_((1.0 / (SD1_SCALE * std)).view(1, -1, 1, 1))
    return {"raw_mean": mean.tolist(), "raw_std": std.tolist()}


@torch.no_grad()
def reconstruction_error(ae: PatchAutoencoder, images: np.ndarray) -> float:
    """Mean absolute error in [0, 1] pixel units."""
    x = to_model_input(images)
    return float((ae.decode(ae.encode(x)).clamp(-1, 1) - x).abs().mean() / 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    started = time.time()
    split = data.load_split("world_train")
    torch.manual_seed(args.seed)
    ae = PatchAutoencoder()
    with torch.inference_mode(False):
        losses = train(ae, split.images, args.steps, args.batch, args.lr, args.seed)
        stats = standardise(ae, split.images[:4096])
        test = data.load_split("classifier_test")
        error = reconstruction_error(ae, test.images[:512])
    record = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "final_mse": float(np.mean(losses[-100:])), "test_mean_abs_error": error, **stats,
              "seconds": round(time.time() - started)}
    out = data.CACHE / "vae.safetensors"
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(out),
                                metadata={"record": json.dumps(record)})
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
