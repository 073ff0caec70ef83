"""Compare sampler settings on a validation caption set of its own (a check, not a choice: every
reported number uses the protocol's euler / normal / 25 steps / CFG 4, fixed before this ran; on the
phase-1 model CFG 6 scored 0.16 against CFG 4's 0.15, within the 64-image noise, and was not adopted).

Usage: python eval/tune_sampler.py  (writes artifacts/sampler_tuning.json)
The validation captions (seed 9, seen combinations only) are disjoint from eval_world's caption
sets and from the Table-2 prompts, so nothing reported is fitted to them.
"""
from __future__ import annotations

import json
import time

import host

host.setup_host()

import classifiers  # noqa: E402
import world  # noqa: E402
from eval_world import alignment  # noqa: E402
from generate import SamplerSettings, encode_text, generate  # noqa: E402
from world_model import load_world_model  # noqa: E402

CANDIDATES = [SamplerSettings(25, cfg, sampler, scheduler) for cfg in (2.0, 3.0, 4.0, 6.0)
              for sampler, scheduler in (("euler", "normal"), ("dpmpp_2m", "karras"))]


def main() -> None:
    wm = load_world_model(host.ARTIFACTS / "world_model.safetensors")
    net = classifiers.load(host.ARTIFACTS / "classifiers.safetensors")
    scene_list = world.scenes(9, 64, "exclude", 0.0)
    cond = encode_text(wm, [world.caption(s, with_position=bool(i % 2)) for i, s in enumerate(scene_list)])
    results = []
    for settings in CANDIDATES:
        start = time.time()
        scores = alignment(scene_list, generate(wm, cond, 900, settings), net)
        # One number to rank by: object right (all three attributes) and background right, equally weighted.
        score = (scores["object_all"] + scores["background_both"]) / 2
        results.append({"settings": settings.__dict__, "score": round(score, 4), **scores})
        print(json.dumps(results[-1]), f"({time.time() - start:.0f}s)", flush=True)
    best = max(results, key=lambda r: r["score"])
    (host.ARTIFACTS / "sampler_tuning.json").write_text(json.dumps({"best": best, "all": results}, indent=1) + "\n")
    print("best", json.dumps(best))


if __name__ == "__main__":
    main()
