"""Build step 3: train the attribute classifiers on the generator's ground truth and report accuracy.

Usage: python eval/train_classifiers.py [--epochs N]
Reads artifacts/cache/vae.safetensors; writes artifacts/classifiers.safetensors and
artifacts/classifiers.json (accuracy per head on held-out generated images).

Half of each batch goes through the world's autoencoder first: the classifiers judge *generated*
images, which are always decoder outputs, so they must not depend on detail the codec removes.
Accuracy is reported on the held-out test split both raw and through the codec.
"""
from __future__ import annotations

import argparse
import json
import time

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import classifiers  # noqa: E402
import data  # noqa: E402
import world  # noqa: E402
from train_diffusion import load_autoencoder  # noqa: E402
from train_vae import to_model_input  # noqa: E402


@torch.no_grad()
def round_trip(ae, images: np.ndarray) -> np.ndarray:
    """uint8 images through encode/decode, back to uint8 (what a generated image looks like at best)."""
    out = []
    for start in range(0, len(images), 500):
        rec = ae.decode(ae.encode(to_model_input(images[start:start + 500]))).clamp(-1, 1)
        out.append(((rec.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy())
    return np.concatenate(out)


def loss_fn(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    has_object = labels["present"] == 1
    total = torch.zeros(())
    for name, value in logits.items():
        mask = has_object if name in world.OBJECT_FACTORS else torch.ones_like(has_object)
        if mask.any():
            total = total + torch.nn.functional.cross_entropy(value[mask], labels[name][mask])
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=30)
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train, test = data.load_split("classifier_train"), data.load_split("classifier_test")
    ae = load_autoencoder(data.CACHE / "vae.safetensors")
    train_rec, test_rec = round_trip(ae, train.images), round_trip(ae, test.images)
    print(f"data ready ({time.time() - started:.0f}s)", flush=True)
    net = classifiers.AttributeNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * len(train.images) // args.batch
    labels = {k: torch.from_numpy(v) for k, v in train.labels.items()}
    net.train()
    for step in range(1, steps + 1):
        index = rng.integers(0, len(train.images), args.batch)
        use_rec = rng.random(args.batch) < 0.5
        pixels = np.where(use_rec[:, None, None, None], train_rec[index], train.images[index])
        x = classifiers.to_input(pixels)
        x = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)  # mild noise: generated pixels are never exact
        loss = loss_fn(net(x), {k: v[index] for k, v in labels.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        if step % 100 == 0:
            print(f"classifier step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f}s)", flush=True)
    net.eval()
    report = {"test_raw": classifiers.accuracy(classifiers.predict(net, test.images), test.labels),
              "test_through_codec": classifiers.accuracy(classifiers.predict(net, test_rec), test.labels),
              "test_split": list(data.SPLITS["classifier_test"]), "train_split": list(data.SPLITS["classifier_train"]),
              "epochs": args.epochs, "batch": args.batch, "lr": args.lr, "seed": args.seed,
              "seconds": round(time.time() - started)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(host.ARTIFACTS / "classifiers.safetensors"))
    (host.ARTIFACTS / "classifiers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
