"""Make the template thumbnails (workflows/*.jpg) and the README's picture from the real frontend.

    COMFYUI_PATH=<ComfyUI> python tests/host/frontend/pictures.py [TITLE_PREFIX ...]

With title prefixes (e.g. "FLUX.1"), only the shipped workflows whose file name starts with one are pictured.

A maintainer's tool, not a test: it starts the test harness's CPU server and headless Chromium
(server.py, browser.py), opens each shipped workflow from the template browser's URL, runs each
training workflow on the test-only tiny models with three synthetic-world concept images (eval/world.py:
one object on three backgrounds), and screenshots a zoomed region after the run, in the frontend's
focus mode (no menus): what training sees and the prompt word the run gave. The tiny models draw
nothing worth showing, so no generated image is pictured. Thumbnails are 1.6:1 (the template
browser's cards, 1.27 and 1.35) at 640 x 400; `test_every_template_has_a_thumbnail` checks that.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]  # tests/ (hostenv) and tests/host (frontend)

from hostenv import PACK_ROOT, find_host, import_host, missing_host_reason  # noqa: E402  (no pytest needed)

THUMBNAIL = (640, 400)
VIEWPORT = (1280, 800)  # 2x the thumbnail: screenshots are shrunk, so text stays sharp
TINY_RUN = {"steps": 2, "width": 64, "height": 64, "resolution": 64, "gradient_accumulation": 1}


def concept_images(folder: Path) -> None:
    """One synthetic-world object on three backgrounds, 256 px (the loader squares and scales them)."""
    from PIL import Image
    spec = importlib.util.spec_from_file_location("prism_world", PACK_ROOT / "eval" / "world.py")
    world = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = world  # dataclasses look their module up while it executes
    spec.loader.exec_module(world)
    thing = world.Scene("white", "plain", "circle", "yellow", "dotted", "large", "center", seed=3)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (colour, pattern) in enumerate([("teal", "plain"), ("brown", "checkered"), ("gray", "wavy")]):
        pixels = (world.render(thing.with_background(colour, pattern, seed=10 + i)) * 255).round().astype("uint8")
        Image.fromarray(pixels).resize((256, 256), Image.Resampling.BICUBIC).save(folder / f"{i:02}.png")


def by_class(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def fed_by(prompt: dict, class_type: str, source: str) -> str:
    """The node of `class_type` whose first linked input comes from node `source`."""
    return next(i for i in by_class(prompt, class_type)
                if any(isinstance(v, list) and v[0] == source for v in prompt[i]["inputs"].values()))


def thumbnail(png: Path, jpg: Path) -> None:
    from PIL import Image
    with Image.open(png) as image:
        image.convert("RGB").resize(THUMBNAIL, Image.Resampling.LANCZOS).save(jpg, quality=90, optimize=True)
    print(f"wrote {jpg.relative_to(PACK_ROOT)}")


def require_host() -> Path:
    """The ComfyUI to use (COMFYUI_PATH, or the one the pack is installed in), importable on the CPU."""
    host = find_host()
    if host is None:
        raise SystemExit(missing_host_reason())
    return import_host(host)


def main() -> None:
    require_host()
    from frontend.browser import FrontendBrowser
    from frontend.prompt_run import family_for, run_prompt, substitute
    from frontend.server import PACK_FOLDER, ComfyServer, make_base_directory

    work = Path(tempfile.mkdtemp(prefix="prism_pictures_"))
    server = ComfyServer(find_host(), make_base_directory(work / "base"))
    server.start()
    browser = FrontendBrowser(server.url, work / "chromium" / "profile")
    try:
        only = sys.argv[1:]
        for path in sorted((PACK_ROOT / "workflows").glob("*.json")):
            if only and not any(path.stem.startswith(prefix) for prefix in only):
                continue
            report = browser.load(path.stem, template=f"{PACK_FOLDER}/{path.stem}", keep=True)
            assert not report.problems(), report.problems()
            prompt = report.prompt
            shot = work / f"{path.stem}.png"
            concept = by_class(prompt, "ConceptPrismLoadConceptSet")
            if concept:  # a training workflow: run it, then show what training saw and the word it gave
                concept_images(work / "base" / "input" / prompt[concept[0]]["inputs"]["folder"])

                def post(p, w):
                    answer = browser.queue(p, w)
                    return (400, answer.get("response") or {}) if "error" in answer else (200, answer["response"])
                tiny = substitute(prompt, family_for(path), TINY_RUN, log=lambda line: None)
                result = run_prompt(server, tiny, report.workflow, timeout=600, post=post)
                assert result.status == "success", result.errors
                browser.wait(result.prompt_id)
                save = by_class(prompt, "ConceptPrismSavePrismEmbedding")[0]
                frame = [fed_by(prompt, "PreviewImage", concept[0]), save, fed_by(prompt, "PreviewAny", save)]
            else:  # "Use a trained concept": the LoRA and the prompt that names the embedding
                frame = by_class(prompt, "LoraLoader") + [i for i in by_class(prompt, "CLIPTextEncode")
                                                         if "embedding:" in prompt[i]["inputs"]["text"]]
            browser.frame(shot, [int(i) for i in frame], pad=30, viewport=VIEWPORT, focus=True)
            thumbnail(shot, path.with_suffix(".jpg"))
            if path.stem.startswith("SD1.5"):  # the README's picture: the three names after a run
                names = [int(i) for s in by_class(prompt, "PreviewAny") for i in (prompt[s]["inputs"]["source"][0], s)]
                browser.frame(PACK_ROOT / "docs" / "names_after_a_run.png", names, pad=30, viewport=(1400, 1000))
                print("wrote docs/names_after_a_run.png")
    finally:
        browser.close()
        server.stop()


if __name__ == "__main__":
    main()
