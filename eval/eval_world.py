"""Build step 4: the world model's own text alignment, judged by the attribute classifiers.

Usage: python eval/eval_world.py [--model PATH] [--count N]
Writes artifacts/world_model_eval.json and a preview grid artifacts/world_model_samples.png.

Three caption sets, each generated once (seed fixed) and classified:
- seen: random training-distribution captions (new scenes; no held-out pair);
- held_out: captions whose (shape, colour) pair never occurred in training;
- empty: "an empty scene, <background>" captions (object present should be 'no').
Per factor: the fraction of images whose classified value is the captioned one.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import host

host.setup_host()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import classifiers  # noqa: E402
import world  # noqa: E402
from generate import SamplerSettings, encode_text, generate  # noqa: E402
from world_model import load_world_model  # noqa: E402

CAPTION_SETS = {"seen": (5, "exclude", 0.0), "held_out": (6, "only", 0.0), "empty": (7, "exclude", 1.0)}
GENERATION_SEED = 100


def alignment(scene_list: list[world.Scene], images: torch.Tensor, net: classifiers.AttributeNet) -> dict[str, float]:
    """Per-factor agreement with the captions, plus 'object_all' (shape, colour and pattern all right)."""
    predicted = classifiers.predict(net, images)
    labels = world.label_arrays(scene_list)
    out = classifiers.accuracy(predicted, labels)
    if labels["present"].any():
        mask = labels["present"] == 1
        out["object_all"] = float(np.mean(np.all([predicted[f][mask] == labels[f][mask] for f in ("shape", "colour", "pattern")], axis=0)))
    out["background_both"] = float(np.mean((predicted["bg_colour"] == labels["bg_colour"]) & (predicted["bg_pattern"] == labels["bg_pattern"])))
    return {k: round(v, 4) for k, v in out.items()}


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    rows = len(images) // columns
    grid = images[:rows * columns].reshape(rows, columns, 64, 64, 3).permute(0, 2, 1, 3, 4).reshape(rows * 64, columns * 64, 3)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=host.ARTIFACTS / "world_model.safetensors")
    parser.add_argument("--count", type=int, default=192)
    parser.add_argument("--out", type=Path, default=host.ARTIFACTS / "world_model_eval.json")
    args = parser.parse_args()
    started = time.time()
    model = load_world_model(args.model)
    net = classifiers.load(host.ARTIFACTS / "classifiers.safetensors")
    settings = SamplerSettings()
    report: dict = {"model": args.model.name, "sampler": settings.__dict__, "generation_seed": GENERATION_SEED, "count": args.count}
    # The ruler on the held-out pairs themselves (rendered, not generated): it must read them as well.
    held_out_scenes = world.scenes(8, 600, "only", 0.0)
    report["classifier_on_held_out_pairs"] = {k: round(v, 4) for k, v in classifiers.accuracy(
        classifiers.predict(net, world.render_batch(held_out_scenes)), world.label_arrays(held_out_scenes)).items()}
    previews = []
    for name, (seed, held_out, empty) in CAPTION_SETS.items():
        scene_list = world.scenes(seed, args.count, held_out, empty)
        prompts = [world.caption(s, with_position=bool(i % 2)) for i, s in enumerate(scene_list)]
        images = generate(model, encode_text(model, prompts), GENERATION_SEED, settings)
        report[name] = alignment(scene_list, images, net)
        previews.append(images[:16])
        print(name, json.dumps(report[name]), f"({time.time() - started:.0f}s)", flush=True)
        if name == "held_out":
            report["held_out_prompts_first_16"] = prompts[:16]
    report["seconds"] = round(time.time() - started)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    save_grid(torch.cat(previews), args.out.with_name(args.out.stem.replace("_eval", "") + "_samples.png"))


if __name__ == "__main__":
    main()
