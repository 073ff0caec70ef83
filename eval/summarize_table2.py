"""Aggregate run_table2.py's unit files into the Table-2 summary (summary.json and summary.md).

Spread: each seed's value is the mean over concepts; the table gives the mean and the sample
standard deviation of those per-seed values, and every seed's value is listed. The paired bootstrap
(full - target_only, resampling (concept, seed) units) is the issue's acceptance statistic.
Usage: python eval/summarize_table2.py DIR   (or run_table2.py --summarize)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import metrics

REFERENCE_CONFIG = "text_prompt"
MAIN_METRICS = ("fidelity", "alignment", "res_no_object", "res_background")
STAGES = {"tokens": "Stage 1 tokens", "lora": "Stage 1 + Stage 2 LoRA", "text": "text prompt (reference)"}


def load_units(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*__*__seed*.json"))]


def per_seed(records: list[dict], stage: str, metric: str, held_out: bool | None = None) -> dict[int, float]:
    """{seed: mean over concepts} of `metric` at `stage` (optionally only held-out / seen concepts)."""
    values: dict[int, list[float]] = {}
    for r in records:
        if stage in r and metric in r[stage] and (held_out is None or r["held_out"] == held_out):
            values.setdefault(r["seed"], []).append(r[stage][metric])
    return {seed: float(np.mean(v)) for seed, v in sorted(values.items())}


def spread(values: dict[int, float]) -> dict[str, Any]:
    arr = np.array(list(values.values()))
    if arr.size == 0:
        return {}
    return {"mean": round(float(arr.mean()), 4), "std": round(float(arr.std(ddof=1)), 4) if arr.size > 1 else None,
            "per_seed": {str(k): round(v, 4) for k, v in values.items()}}


def paired(records: list[dict], stage: str, metric: str, a: str, b: str) -> dict[str, Any] | None:
    """Bootstrap CI of config a - config b over units present for both (same concept and seed)."""
    def table(config: str) -> dict[tuple[str, int], float]:
        return {(r["concept"], r["seed"]): r[stage][metric] for r in records if r["config"] == config and stage in r}
    ta, tb = table(a), table(b)
    keys = sorted(set(ta) & set(tb))
    if len(keys) < 2:
        return None
    mean, low, high = metrics.bootstrap_difference(np.array([ta[k] for k in keys]), np.array([tb[k] for k in keys]))
    return {"difference": round(mean, 4), "ci95": [round(low, 4), round(high, 4)], "units": len(keys)}


def paired_images(records: list[dict], stage: str, metric: str, a: str, b: str) -> dict[str, Any] | None:
    """Bootstrap CI of config a - config b over paired '[V] on <new background>' images (same concept,
    seed, prompt and noise): the host-tier test's statistic, on every unit."""
    def table(config: str) -> dict[tuple[str, int], list[float]]:
        return {(r["concept"], r["seed"]): r[stage]["per_image"][metric] for r in records
                if r["config"] == config and stage in r and "per_image" in r[stage]}
    ta, tb = table(a), table(b)
    keys = sorted(set(ta) & set(tb))
    if not keys:
        return None
    mean, low, high = metrics.bootstrap_difference(np.concatenate([ta[k] for k in keys]), np.concatenate([tb[k] for k in keys]))
    return {"difference": round(mean, 4), "ci95": [round(low, 4), round(high, 4)], "images": sum(len(ta[k]) for k in keys)}


def summarize(folder: Path, budget: Any = None, configs: list[str] | None = None) -> str:
    records = load_units(folder)
    configs = configs or sorted({r["config"] for r in records})
    summary: dict[str, Any] = {"units": len(records), "budget": getattr(budget, "__dict__", None) and dict(budget.__dict__), "rows": {}}
    lines = ["| configuration | stage | fidelity | alignment | residual: no object | residual: background | fidelity held-out / seen |",
             "|---|---|---|---|---|---|---|"]
    for config in configs:
        rows = [r for r in records if r["config"] == config]
        for stage in STAGES:
            if not any(stage in r for r in rows):
                continue
            row = {m: spread(per_seed(rows, stage, m)) for m in MAIN_METRICS}
            row["fidelity_held_out"] = spread(per_seed(rows, stage, "fidelity", True))
            row["fidelity_seen"] = spread(per_seed(rows, stage, "fidelity", False))
            summary["rows"][f"{config}/{stage}"] = row

            def cell(s: dict) -> str:
                return "-" if not s else f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s.get("std") is not None else "")
            split = f"{cell(row['fidelity_held_out'])} / {cell(row['fidelity_seen'])}"
            lines.append(f"| {config} | {STAGES[stage]} | {cell(row['fidelity'])} | {cell(row['alignment'])} | "
                         f"{cell(row['res_no_object'])} | {cell(row['res_background'])} | {split} |")
    lines += ["", "Every seed (mean over concepts), seed 0 / 1 / 2:", "",
              "| configuration | stage | " + " | ".join(MAIN_METRICS) + " |", "|---|---|" + "---|" * len(MAIN_METRICS)]
    for key, row in summary["rows"].items():
        config, stage = key.split("/")
        seeds = [" / ".join(f"{v:.3f}" for v in row[m].get("per_seed", {}).values()) or "-" for m in MAIN_METRICS]
        lines.append(f"| {config} | {STAGES[stage]} | " + " | ".join(seeds) + " |")
    # The acceptance statistic is full - target_only; every other row against target_only is reported too.
    others = [c for c in configs if c not in ("target_only", REFERENCE_CONFIG)]
    for title, kind, function, unit in (("(concept, seed) units", "units", paired, "units"),
                                        ("images (same prompt and noise)", "images", paired_images, "images")):
        lines += ["", f"Row - target_only, paired bootstrap over {title}, 95% CI:", ""]
        for config in others:
            key = f"{config}_minus_target_only" + ("" if kind == "units" else "_images")
            summary[key] = {f"{stage}/{m}": function(records, stage, m, config, "target_only")
                            for stage in ("tokens", "lora") for m in ("fidelity", "alignment")}
            for name, value in summary[key].items():
                if value:
                    lines.append(f"- {config} - target_only, {name}: {value['difference']:+.3f} "
                                 f"[{value['ci95'][0]:+.3f}, {value['ci95'][1]:+.3f}] ({value[unit]} {unit})")
    text = "\n".join(lines) + "\n"
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "summary.md").write_text(text)
    return text


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
