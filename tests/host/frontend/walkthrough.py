"""A new user's first concept, in the real frontend, on a ComfyUI where the pack is installed as the README says.

A manual check (minutes of CPU), not a test. In a fresh Python environment:

    python -m venv venv && . venv/bin/activate
    pip install -r ComfyUI/requirements.txt requests          # ComfyUI itself, as its README installs it
    cd ComfyUI/custom_nodes && git clone <this repository> conceptprism && cd ../..   # this README's install
    python ComfyUI/custom_nodes/conceptprism/tests/host/frontend/walkthrough.py --comfyui ComfyUI --out walk

It then does what the README's "First concept" says, in headless Chromium with a fresh profile,
screenshotting each step into --out and writing --out/steps.md (what was on screen, step by step):
a random-weight SD1.5-shaped checkpoint into models/checkpoints (sd15_checkpoint.py; no real weights
may be used here); `python main.py --cpu` in the ComfyUI folder (no GPU here); the template browser ->
ConceptPrism -> "SD1.5 - train a concept"; Run with no concept images (what Run says); the folder and
three images; the tiny CPU settings (every training and sampling count 2, accumulation 1, 64 px); Run;
the prompt word and file names the page shows; then "Use a trained concept" with exactly those names
typed in; Run; the image. It exits non-zero if a step does not show what it should. The runs on
both tested releases, each in a fresh environment, are recorded in walkthrough_runs/.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

CHECKPOINT = "sd15_random.safetensors"
CPU_SETTINGS = {"steps": 2, "gradient_accumulation": 1, "resolution": 64, "width": 64, "height": 64}


class Walk:
    def __init__(self, comfyui: Path, out: Path):
        self.comfyui, self.out = comfyui, out
        self.lines: list[str] = []
        self.shot_number = 0

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def check(self, ok: bool, what: str) -> None:
        self.note(f"  - {'OK' if ok else 'FAILED'}: {what}")
        if not ok:
            self.write_report()
            raise SystemExit(f"walk-through stopped: {what}")

    def shot(self, browser, name: str, frame: list[int] | None = None) -> None:
        self.shot_number += 1
        path = self.out / f"{self.shot_number:02} {name}.png"
        if frame:
            browser.frame(path, frame, pad=30)
        else:
            browser.screenshot(path)
        self.note(f"  - screenshot: {path.name}")

    def write_report(self) -> None:
        (self.out / "steps.md").write_text("\n".join(self.lines) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def wait_for_new_run(url: str, seen: set[str], timeout: float = 3600) -> tuple[str, dict]:
    """The first /history entry not in `seen`, once the server has filed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = {k: v for k, v in get(f"{url}/history").items() if k not in seen}
        if new:
            return next(iter(new.items()))
        time.sleep(2)
    raise TimeoutError("no run finished")


def nodes_of(browser, node_type: str) -> list[int]:
    return [int(i) for i, n in browser.widgets().items() if n["type"] == node_type]


def click_run(browser) -> None:
    """The Run button, as a user presses it (its label is "Run" in frontends 1.27 and 1.35)."""
    browser.click("Run", exact=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI folder (the pack in custom_nodes/conceptprism)")
    parser.add_argument("--out", type=Path, required=True, help="where screenshots and steps.md go")
    args = parser.parse_args()
    comfyui, out = args.comfyui.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["COMFYUI_PATH"] = str(comfyui)
    walk = Walk(comfyui, out)
    pack = comfyui / "custom_nodes" / "conceptprism"
    walk.note(f"# First concept on {comfyui.name}\n\nPython {sys.version.split()[0]} at {sys.executable}")
    walk.check((pack / "__init__.py").is_file(), f"the pack is installed as the README says ({pack})")

    walk.note("\n## 1. A checkpoint in models/checkpoints")
    checkpoint = comfyui / "models" / "checkpoints" / CHECKPOINT
    if not checkpoint.exists():
        from sd15_checkpoint import write
        write(checkpoint)
    walk.check(checkpoint.stat().st_size > 1.5 * 2**30, f"{checkpoint.relative_to(comfyui)}: random weights, SD1.5 shapes")
    concept = comfyui / "input" / "conceptprism" / "my_concept"
    walk.check(not concept.exists(), "input/conceptprism/my_concept does not exist yet (nothing creates it at install)")

    walk.note("\n## 2. `python main.py --cpu` in the ComfyUI folder")
    port = free_port()
    log = (out / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
                              cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    from frontend.browser import FrontendBrowser
    browser = None
    try:
        for _ in range(240):
            try:
                get(f"{url}/system_stats")
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"ComfyUI exited; see {out / 'server.log'}")
                time.sleep(0.5)
        from importlib.metadata import version
        walk.note(f"  - ComfyUI {get(f'{url}/system_stats')['system'].get('comfyui_version')}, "
                  f"frontend {version('comfyui-frontend-package')}, torch {version('torch')}")
        loaded = [line for line in (out / "server.log").read_text().splitlines() if "conceptprism" in line]
        walk.note("  - server log on the pack: " + (" | ".join(loaded) or "(no line names it)"))
        browser = FrontendBrowser(url, out / "chromium-profile")

        walk.note("\n## 3. The template browser: ConceptPrism -> SD1.5 - train a concept")
        report = browser.load("first start", keep=True)  # the app as it opens, fresh profile
        walk.note(f"  - on opening: {[m['text'][:80] for m in report.startup['ui'] + report.ui] or 'no dialog'}")
        if not any(m["kind"] == "dialog" and "emplate" in m["text"] for m in report.startup["ui"] + report.ui):
            browser.command("Comfy.BrowseTemplates")
        try:
            browser.click("ConceptPrism", exact=True)
        except RuntimeError:
            browser.click("conceptprism", exact=True)
        walk.shot(browser, "the template browser, ConceptPrism")
        browser.click("SD1.5 - train a concept", exact=True)
        graph = browser.widgets()
        types = {n["type"] for n in graph.values()}
        walk.check("ConceptPrismOptimizePrismTokens" in types and "PreviewAny" in types, "the SD1.5 template is on the canvas")
        walk.shot(browser, "the SD1.5 template")

        walk.note("\n## 4. Run before any image is in place")
        ckpt = nodes_of(browser, "CheckpointLoaderSimple")
        concept_node = nodes_of(browser, "ConceptPrismLoadConceptSet")
        browser.set_widgets({ckpt[0]: {"ckpt_name": CHECKPOINT}})
        answer = browser.run()
        shown = " ".join(m["text"] for m in answer["ui"])
        walk.note(f"  - shown: {shown[:600]}")
        walk.check(str(concept) in shown and "does not exist" in shown, "Run names the missing folder with its full path")
        walk.shot(browser, "Run without images", frame=ckpt + concept_node)
        browser.key("Escape")  # closes the dialog

        walk.note("\n## 5. Three images in input/conceptprism/my_concept, CPU-sized settings, Run")
        from pictures import concept_images
        concept_images(concept)
        walk.note(f"  - {sorted(p.name for p in concept.iterdir())} (synthetic-world renders: one object, three backgrounds)")
        graph = browser.widgets()
        settings = {}
        for node_id, node in graph.items():
            lowered = {k: v for k, v in CPU_SETTINGS.items() if k in node["widgets"]}
            if node["type"] == "CheckpointLoaderSimple":
                lowered["ckpt_name"] = CHECKPOINT
            if lowered:
                settings[int(node_id)] = lowered
        browser.set_widgets(settings)
        walk.note(f"  - set: {json.dumps({graph[str(k)]['title']: v for k, v in settings.items()})}")
        seen = set(get(f"{url}/history"))
        start = time.monotonic()
        click_run(browser)
        prompt_id, entry = wait_for_new_run(url, seen)
        browser.wait(prompt_id)
        walk.note(f"  - run {entry['status']['status_str']} in {time.monotonic() - start:.0f} s")
        walk.check(entry["status"]["status_str"] == "success", "the training workflow ran")
        graph = browser.widgets()
        names = {}
        for node_id, node in graph.items():
            if node["type"] == "PreviewAny":
                names[node["title"]] = node["widgets"].get("preview")
                walk.note(f"  - '{node['title']}' shows {names[node['title']]!r}")
        word = next(v for k, v in names.items() if k.startswith("Prompt word"))
        lora = next(v for k, v in names.items() if k.startswith("LoRA file"))
        walk.check(word.startswith("embedding:") and (comfyui / "models" / "embeddings" / (word[10:] + ".safetensors")).is_file(),
                   f"the prompt word {word} names a file in models/embeddings")
        walk.check((comfyui / "models" / "loras" / lora).is_file(), f"the LoRA file {lora} is in models/loras")
        previews = [int(i) for i, n in graph.items() if n["type"] == "PreviewAny"]
        saves = [int(i) for i, n in graph.items() if n["type"].startswith("ConceptPrismSave")]
        walk.shot(browser, "the names after the run", frame=saves + previews)

        walk.note("\n## 6. Use a trained concept: the LoRA file and the prompt word as shown")
        browser.key("r")  # Refresh: lists read when the page opened do not have the new LoRA yet
        browser.command("Comfy.BrowseTemplates")
        try:
            browser.click("ConceptPrism", exact=True)
        except RuntimeError:
            browser.click("conceptprism", exact=True)
        browser.click("Use a trained concept", exact=True)
        graph = browser.widgets()
        lora_choices = next(n["options"]["lora_name"] for n in graph.values() if n["type"] == "LoraLoader")
        walk.check(lora in lora_choices, f"after Refresh (R), Load LoRA's list offers {lora}")
        settings = {}
        for node_id, node in graph.items():
            w = node["widgets"]
            lowered = {k: v for k, v in CPU_SETTINGS.items() if k in w}
            if node["type"] == "CheckpointLoaderSimple":
                lowered["ckpt_name"] = CHECKPOINT
            if node["type"] == "LoraLoader":
                lowered["lora_name"] = lora
            if node["type"] == "CLIPTextEncode" and "embedding:" in w.get("text", ""):
                lowered["text"] = f"a photo of {word} on the beach"
            if lowered:
                settings[int(node_id)] = lowered
        browser.set_widgets(settings)
        walk.note(f"  - set: {json.dumps({graph[str(k)]['title']: v for k, v in settings.items()})}")
        log_start = len((out / "server.log").read_text())
        seen = set(get(f"{url}/history"))
        click_run(browser)
        prompt_id, entry = wait_for_new_run(url, seen)
        browser.wait(prompt_id)
        walk.check(entry["status"]["status_str"] == "success", "the stock graph ran")
        images = [img for output in entry["outputs"].values() for img in output.get("images", [])]
        walk.check(bool(images) and (comfyui / "output" / images[0]["subfolder"] / images[0]["filename"]).is_file(),
                   f"it saved {images[0]['subfolder']}/{images[0]['filename'] if images else '?'}")
        run_log = (out / "server.log").read_text()[log_start:]
        warnings = [line for line in run_log.splitlines()
                    if any(t in line for t in ("does not exist, ignoring", "embedding will be ignored", "lora key not loaded", "ERROR lora"))]
        walk.check(not warnings, f"the server used the embedding and the LoRA (no warning): {warnings[:3]}")
        walk.shot(browser, "the stock graph after its run", frame=[int(i) for i in graph])
    finally:
        if browser:
            browser.close()
        server.terminate()
        server.wait(timeout=30)
        log.close()
        walk.write_report()
    walk.note("\nDone.")
    walk.write_report()


if __name__ == "__main__":
    main()
