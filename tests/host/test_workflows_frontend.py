"""Workflow files in the real ComfyUI frontend, then queued on a CPU server (issue 4's checks).

One ComfyUI server (`main.py --cpu`, temporary base directory, the pack plus a test-only tiny
checkpoint loader) and one headless Chromium serve the whole module. Each workflow is loaded in
a fresh page the way the template browser or a drag-and-drop does; it must show no missing node
type, no toast or dialog (the frontend's schema check reports through an "Alert" toast), no console
or page error. The frontend's own graph-to-prompt output is then queued from that page with tiny
models in place of checkpoints and lowered steps/resolution, every change printed (see `pytest -rP`
or `-s`), and what the page then shows is checked: the names the Save nodes report must appear in
the stock Preview Any nodes wired to them. Screenshots land in tests/host/frontend/screenshots/.

Needs the host (COMFYUI_PATH) and, beyond it, Debian's chromium and the npm package playwright-core;
without them the module skips and says what to install (fails, with CONCEPTPRISM_REQUIRE_HOST set).
"""
from __future__ import annotations

import importlib
import io
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors

from host_setup import PACK_ROOT, find_host, require_host, skip_or_fail

require_host()

import comfy.supported_models  # noqa: E402

from frontend.browser import FrontendBrowser, LoadReport, is_external, missing_tools  # noqa: E402
from frontend.prompt_run import RunResult, family_for, run_prompt, substitute  # noqa: E402
from frontend.server import (PACK_FOLDER, TEST_LOADER, TEST_NODE_FOLDER, TEST_PART_LOADERS, TEST_VISION_LOADER, ComfyServer,  # noqa: E402
                             make_base_directory)
from manager_scan import literal_mapping_keys  # noqa: E402

_MISSING_TOOLS = missing_tools()
if _MISSING_TOOLS:
    skip_or_fail(_MISSING_TOOLS)

FIXTURES = Path(__file__).resolve().parent / "frontend" / "fixtures"
SCREENSHOTS = Path(__file__).resolve().parent / "frontend" / "screenshots"
SHIPPED = sorted((PACK_ROOT / "workflows").glob("*.json"))

# Lowered widgets for CPU runs on tiny models: sampling and training steps, image sizes.
LOWER = {"steps": 2, "width": 64, "height": 64, "resolution": 64}


@dataclass
class WorkflowCase:
    """What one shipped workflow needs and must produce. Keyed by file stem in WORKFLOW_CASES."""

    family: str | None = None  # tiny model family; None: from the file name (frontend.prompt_run.family_for)
    overrides: dict[str, object] = field(default_factory=lambda: dict(LOWER))
    concept_images: int = 3  # images written into input/<folder> of each Load Concept Set node
    expected_outputs: dict[str, int] = field(default_factory=dict)  # node class -> least number of output items
    expected_files: list[str] = field(default_factory=list)  # globs under the base directory, new files only
    timeout: float = 300.0
    # Every Save node's name shown on the canvas by a Preview Any wired to it (issue 16). The sweep
    # template feeds its saved LoRA name into the sweep instead, whose report Preview Any shows the choice.
    names_shown: bool = True
    # Called with the running server (its base directory is server.base) before the run, to put files
    # the workflow expects in place (e.g. the embedding and LoRA that "Use a trained concept" loads); it
    # should print what it does.
    prepare: Callable[[ComfyServer], None] | None = None
    # Text that must not appear in the server log during the run: the host's warnings for an
    # `embedding:` word it cannot find or use, and for LoRA keys or weights it could not apply.
    log_must_not_contain: tuple[str, ...] = ("does not exist, ignoring", "embedding will be ignored",
                                             "lora key not loaded", "ERROR lora")


# The training workflows' outputs (issue 4: images, embedding file, LoRA file, loss graph). Every
# training step count is lowered to 2 and gradient_accumulation to 1 to keep the module short; previews
# (issue 17) render after every one of those steps, with 2 sampler steps.
TRAINING_LOWER = {**LOWER, "gradient_accumulation": 1, "preview_every": 1, "preview_steps": 2}
PREVIEWS_SHOWN = 2 * 2  # both stages' previews outputs: steps 1 and 2, one prompt
TRAINING_OUTPUTS = {
    "SaveImage": 3 + 1,  # the three scenes and the loss graph
    # what training sees (one per image), residual 0 and 1 alone, and the previews while training
    "PreviewImage": WorkflowCase.concept_images + 2 + PREVIEWS_SHOWN,
    "ConceptPrismSavePrismEmbedding": 1, "ConceptPrismSavePrismLoRA": 1, "ConceptPrismSavePrismTokens": 1,
    "PreviewAny": 3,  # the prompt word and the two file names, shown on the canvas
}
# Save node -> (its models folder, how its reported name maps to the file there).
SAVE_NODES = {
    "ConceptPrismSavePrismEmbedding": ("models/embeddings", lambda word: word.removeprefix("embedding:") + ".safetensors"),
    "ConceptPrismSavePrismLoRA": ("models/loras", lambda name: name),
    "ConceptPrismSavePrismTokens": ("models/prism_tokens", lambda name: name),
}
TRAINING_FILES = [
    "models/embeddings/conceptprism/concept_*_.safetensors",
    "models/loras/conceptprism/concept_lora_*_.safetensors",
    "models/prism_tokens/conceptprism/concept_*_.safetensors",
    "output/conceptprism/scene_*_.png",
    "output/conceptprism/loss_*_.png",
]

# The sweep workflow (issue 18): 2 training steps with a checkpoint after the first, so the sweep
# measures step 0, the step-1 checkpoint and the final LoRA, 2 prompts each; the chosen LoRA then draws
# a scene. Its CLIP vision loaders become tiny CLIP / DINOv2 towers (frontend.prompt_run.substitute).
SWEEP_LOWER = {**TRAINING_LOWER, "ConceptPrismPrismLoRATrain.checkpoint_every": 1, "prompt_count": 2}
SWEEP_OUTPUTS = {
    "SaveImage": 1 + 3,  # the loss graph, the trade-off plot, the score table, the chosen step's scene
    # what training sees, every render of the sweep, and the previews while training
    "PreviewImage": WorkflowCase.concept_images + 3 * 2 + PREVIEWS_SHOWN,
    "PreviewAny": 1,  # the numbers and the choice
    "ConceptPrismSavePrismLoRA": 1, "ConceptPrismSavePrismEmbedding": 1,
}
SWEEP_FILES = [
    "models/loras/conceptprism/concept_lora_step0001_*_.safetensors",
    "models/loras/conceptprism/concept_lora_*_.safetensors",
    "output/conceptprism/sweep_tradeoff_*_.png",
    "output/conceptprism/sweep_table_*_.png",
    "output/conceptprism/chosen_scene_*_.png",
]

# What "Use a trained concept" loads (the names the SD1.5 workflow's Save nodes give in a fresh folder).
SAVED_LORA = "models/loras/conceptprism/concept_lora_00001_.safetensors"
SAVED_EMBEDDING = "models/embeddings/conceptprism/concept_00001_.safetensors"
SD15_HEADERS = {SAVED_LORA: "sd15", SAVED_EMBEDDING: "clip_l"}  # their family header for SD1.x


def _family_header(path: Path) -> str | None:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    # LoRAs name the model family; embeddings name the text encoders they go into.
    return header.get("conceptprism.family") or header.get("conceptprism.text_encoders")


def ensure_saved_sd15_concept(server: ComfyServer) -> None:
    """Put the SD1.x embedding and LoRA that "Use a trained concept" names in place, whatever ran before.

    After the "SD1.5 - train a concept" case (which runs first in this module) they are that run's files and
    are used as they are. Otherwise (the case run alone, or after other families took those names)
    files of another family are moved aside and a 2-step tiny SD1.x training graph of the pack's own
    nodes (Load Concept Set, Optimize Prism Tokens, Save Prism Embedding, Prism LoRA Train, Save Prism
    LoRA) is queued on this server to write them.
    """
    base = server.base
    present = {name: _family_header(base / name) if (base / name).is_file() else None for name in SD15_HEADERS}
    if all(present[name] == family for name, family in SD15_HEADERS.items()):
        print(f"prepare: {SAVED_EMBEDDING} and {SAVED_LORA} are there (SD1.x, from an earlier run); using them")
        return
    for name in SD15_HEADERS:  # free the _00001_ names: every file of that series goes
        folder, stem = (base / name).parent, (base / name).name.split("_00001_")[0]
        for old in sorted(folder.glob(f"{stem}_[0-9]*_.safetensors")) if folder.is_dir() else []:
            aside = folder.with_name(folder.name + "_moved_aside")
            aside.mkdir(exist_ok=True)
            old.rename(aside / old.name)
            print(f"prepare: moved {old.relative_to(base)} ({_family_header(aside / old.name)}) to {aside.relative_to(base)}/")
    tiny = {"class_type": TEST_LOADER, "inputs": {"family": "sd15"}}
    prompt = {
        "1": tiny,
        "2": {"class_type": "ConceptPrismLoadConceptSet",
              "inputs": {"folder": "conceptprism/prepare_concept", "resolution": 64, "captions": ""}},
        "3": {"class_type": "ConceptPrismOptimizePrismTokens", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "target_length": 1,
            "residual_length": 8, "beta": 0.05, "exclusion_set_size": 3, "learning_rate": 4e-4, "steps": 2,
            "gradient_accumulation": 1, "caption_init": True, "seed": 0}},
        "4": {"class_type": "ConceptPrismSavePrismEmbedding", "inputs": {"tokens": ["3", 0], "filename_prefix": "conceptprism/concept"}},
        "5": {"class_type": "ConceptPrismPrismLoRATrain", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "concept_set": ["2", 0], "tokens": ["3", 0], "rank": 4,
            "alpha": 4.0, "learning_rate": 4e-4, "steps": 2, "gradient_accumulation": 1, "seed": 0}},
        "6": {"class_type": "ConceptPrismSavePrismLoRA",
              "inputs": {"lora": ["5", 1], "filename_prefix": "conceptprism/concept_lora", "save_dtype": "float32"}},
    }
    write_concept_images(prompt, base / "input", 3)
    result = run_prompt(server, prompt)
    print(f"prepare: tiny SD1.x training graph {result.status} in {result.seconds:.1f} s; outputs {result.outputs}")
    assert result.status == "success" and not result.errors, "\n".join(result.errors)
    for name, family in SD15_HEADERS.items():
        assert (base / name).is_file() and _family_header(base / name) == family, f"prepare did not write {name}"
        print(f"prepare: wrote {name} (conceptprism.family {family!r})")


def training(family: str) -> WorkflowCase:
    return WorkflowCase(family=family, overrides=TRAINING_LOWER, expected_outputs=TRAINING_OUTPUTS,
                        expected_files=TRAINING_FILES)


# Per shipped file (its stem is the template browser's title); a file not listed runs with the
# defaults and only has to finish with some output.
WORKFLOW_CASES: dict[str, WorkflowCase] = {
    "SD1.5 - train a concept": training("sd15"),
    "SD2.1 - train a concept": training("sd2v"),  # the 768-v (v-prediction) variant: the harder of the two
    "SDXL - train a concept": training("sdxl"),
    # UNETLoader + DualCLIPLoader + VAELoader become the tiny FLUX's parts (frontend.prompt_run.substitute)
    "FLUX.1 - train a concept": training("flux"),
    # UNETLoader + CLIPLoader (Qwen3-4B) + VAELoader become the tiny Z-Image's parts; releases without Z-Image
    # load the template and do not run it
    "Z-Image - train a concept": training("zimage"),
    # the same with FLUX.2 Klein 4B's parts; releases without Klein skip it before loading (its latent node and
    # CLIP type are not there)
    "FLUX.2 Klein - train a concept": training("klein4b"),
    "Use a trained concept": WorkflowCase(family="sd15", prepare=ensure_saved_sd15_concept,
                                          expected_outputs={"SaveImage": 1},
                                          expected_files=["output/conceptprism/saved_concept_*_.png"]),
    "SD2.1 - train and pick the step": WorkflowCase(family="sd2v", overrides=SWEEP_LOWER, expected_outputs=SWEEP_OUTPUTS,
                                                    expected_files=SWEEP_FILES, names_shown=False),
}


@dataclass
class Frontend:
    """The module's server (its base directory is server.base) and browser."""

    server: ComfyServer
    browser: FrontendBrowser

    def load(self, name: str, keep: bool = False, **source) -> LoadReport:
        """Load a workflow (workflow=dict or template="<folder>/<stem>"), screenshot it, print a summary.
        With keep, the page stays open (self.browser's page methods act on it)."""
        start = time.monotonic()
        report = self.browser.load(name, screenshot=SCREENSHOTS / f"{name}.png", keep=keep, **source)
        print(f"[{name}] loaded in {time.monotonic() - start:.1f} s (ms since page open: {report.times_ms}); "
              f"screenshot {report.screenshot}")
        startup = report.startup
        print(f"[{name}] frontend start-up, before the load (not checked but toasts/dialogs): "
              f"{len(startup['consoleErrors'])} console errors, page errors "
              f"{[e.splitlines()[0] for e in startup['pageErrors']]}")
        for line in report.problems():
            print(f"[{name}] PROBLEM {line}")
        for line in report.blocked_lookups():
            print(f"[{name}] blocked network lookup (no network here; not counted): {line}")
        for line in report.missing_models():
            print(f"[{name}] missing model files (tiny models replace them; not counted): {line}")
        return report

    def post_from_page(self, prompt: dict, workflow: dict | None) -> tuple[int, dict]:
        """Queue from the open page (prompt_run.run_prompt's `post`): the page gets the run's messages."""
        answer = self.browser.queue(prompt, workflow)
        if "error" in answer:
            return 400, answer.get("response") or {"error": answer["error"]}
        return 200, answer["response"]


@pytest.fixture(scope="module")
def frontend(tmp_path_factory) -> Iterator[Frontend]:
    base = make_base_directory(tmp_path_factory.mktemp("comfy_base"))
    server = ComfyServer(find_host(), base)
    start = time.monotonic()
    try:
        server.start()
        print(f"ComfyUI up at {server.url} in {time.monotonic() - start:.1f} s (log {server.log_path})")
        browser = FrontendBrowser(server.url, tmp_path_factory.mktemp("chromium") / "profile")
        try:
            yield Frontend(server, browser)
        finally:
            browser.close()
    finally:
        server.stop()


def assert_loads_cleanly(report: LoadReport) -> None:
    """The issue's load check: nothing missing, nothing shown, nothing logged, and a prompt came out."""
    problems = report.problems()
    if report.prompt is None and not report.prompt_error:
        problems.append("graphToPrompt returned no prompt")
    context = "".join(f"\n  request {r['url']}: {r['failure']}" for r in report.failed_requests)
    assert not problems, f"{report.name} did not load cleanly:\n  " + "\n  ".join(problems) + context


def run_with_tiny_models(frontend: Frontend, report: LoadReport, family: str, overrides: dict[str, object],
                         timeout: float = 180.0, from_page: bool = False) -> tuple[dict, RunResult]:
    """Queue the frontend's prompt with the allowed substitutions; print them and how the run ended.
    from_page: queue it from the page `report` kept open, and wait until that page has the run's messages."""
    prompt = substitute(report.prompt, family, overrides, log=lambda line: print(f"[{report.name}] {line}"))
    result = run_prompt(frontend.server, prompt, report.workflow, timeout=timeout,
                        post=frontend.post_from_page if from_page else None)
    if from_page and result.prompt_id:
        events = frontend.browser.wait(result.prompt_id, timeout)
        print(f"[{report.name}] the page received {[e['type'] for e in events]}")
    print(f"[{report.name}] run {result.status} in {result.seconds:.1f} s; outputs {result.outputs_by_class(prompt)}")
    for error in result.errors:
        print(f"[{report.name}] ERROR {error}")
    return prompt, result


def _files(base: Path) -> set[Path]:
    return {p for folder in ("output", "models") for p in (base / folder).rglob("*") if p.is_file()}


def write_concept_images(prompt: dict, input_dir: Path, count: int) -> None:
    """Give every Load Concept Set node the folder it names, under input/, with `count` small images."""
    from PIL import Image

    for node_id, node in prompt.items():
        folder = node["inputs"].get("folder")
        if node["class_type"] == "ConceptPrismLoadConceptSet" and isinstance(folder, str) and folder:
            target = input_dir / folder
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (96 + 16 * i, 96), (200, 40 * i, 60)).save(target / f"{i:02}.png")
            print(f"test data: {count} images in input/{folder} for node {node_id}")


def shown_names(frontend: Frontend, prompt: dict, result: RunResult, stem: str) -> dict[str, str]:
    """{Save node class: the name its Preview Any node shows}, checked against what the Save node
    reported to the server (its history entry) and the file that name stands for; screenshots them."""
    previews = {node_id: node["inputs"]["source"][0] for node_id, node in prompt.items()
                if node["class_type"] == "PreviewAny" and isinstance(node["inputs"].get("source"), list)
                and prompt[node["inputs"]["source"][0]]["class_type"] in SAVE_NODES}
    shown = frontend.browser.widgets([int(i) for i in previews])
    names = {}
    for preview_id, save_id in previews.items():
        save_class = prompt[save_id]["class_type"]
        reported = result.outputs[save_id]["text"][0]
        # Preview Any's text widget: "preview" up to about frontend 1.3x, "preview_text" (beside a
        # "preview_mode" toggle) in later ones.
        widgets = shown[preview_id]["widgets"]
        value = next((widgets[name] for name in ("preview", "preview_text") if name in widgets), None)
        assert value is not None, f"{shown[preview_id]['title']} has no preview text widget: {sorted(widgets)}"
        print(f"[{stem}] node {preview_id} '{shown[preview_id]['title']}' shows {value!r} ({save_class} reported {reported!r})")
        assert value == reported, f"{shown[preview_id]['title']} shows {value!r}, {save_class} reported {reported!r}"
        folder, file_of = SAVE_NODES[save_class]
        assert (frontend.server.base / folder / file_of(value)).is_file(), f"{value!r} names no file in {folder}"
        names[save_class] = value
    frame = sorted({int(i) for pair in previews.items() for i in pair})
    if frame:
        frontend.browser.frame(SCREENSHOTS / f"{stem} - names after the run.png", frame, viewport=(1200, 900))
    return names


def test_server_loads_the_pack_and_the_test_only_node(frontend: Frontend):
    pack_nodes = frontend.server.loaded_from(PACK_FOLDER)
    print(f"ComfyUI's loader registered from custom_nodes/{PACK_FOLDER}: {pack_nodes}")
    # What ComfyUI-Manager reads from the source is what the host's loader registers.
    assert pack_nodes == sorted(literal_mapping_keys((PACK_ROOT / "nodes" / "__init__.py").read_text()))
    assert frontend.server.loaded_from(TEST_NODE_FOLDER) == sorted([TEST_LOADER, TEST_VISION_LOADER, *TEST_PART_LOADERS.values()])


def test_every_template_has_a_thumbnail(frontend: Frontend):
    from PIL import Image

    stems = frontend.server.get("/workflow_templates")[PACK_FOLDER]
    assert sorted(stems) == sorted(p.stem for p in SHIPPED)
    for stem in stems:  # fetched as the template browser does: /api/workflow_templates/<folder>/<stem>.jpg
        with urllib.request.urlopen(f"{frontend.server.url}/api/workflow_templates/{PACK_FOLDER}/"
                                    f"{urllib.parse.quote(stem)}.jpg", timeout=30) as response:
            image = Image.open(io.BytesIO(response.read()))
            assert image.format == "JPEG" and image.width >= 512 and image.width / image.height == 1.6, (stem, image.size)


def test_a_first_run_names_everything_missing_at_once(frontend: Frontend):
    """No checkpoint in models/checkpoints and no concept folder: one Run, one dialog naming both."""
    stem = "SD1.5 - train a concept"
    report = frontend.load(f"{stem} (first run)", keep=True, template=f"{PACK_FOLDER}/{stem}")
    assert_loads_cleanly(report)
    concept_id = next(int(i) for i, n in report.prompt.items() if n["class_type"] == "ConceptPrismLoadConceptSet")
    checkpoint_id = next(int(i) for i, n in report.prompt.items() if n["class_type"] == "CheckpointLoaderSimple")
    folder = "conceptprism/first_run_not_created"  # the template's own folder may exist from another test
    frontend.browser.set_widgets({concept_id: {"folder": folder}})
    answer = frontend.browser.run()  # what the Run button does
    print(f"[first run] queued: {answer['queued']}; shown: {answer['ui']}")
    frontend.browser.frame(SCREENSHOTS / "first run - what Run shows.png", [checkpoint_id, concept_id], viewport=(1600, 1000))
    # Frontends up to 1.3x show a dialog with the server's messages: it must name both problems, the folder's
    # full path included. Frontends with the "N errors found" card (1.4x) list each failing input there (node
    # title and input name) and keep the server's messages for the node badges and the panel
    # (app.lastNodeErrors): the card must name both inputs and the kept messages the path.
    dialogs = " ".join(m["text"] for m in answer["ui"] if m["kind"] == "dialog")
    cards = " ".join(" ".join([m["text"], *(g["text"] for g in m.get("groups") or [])])
                     for m in answer["ui"] if m["kind"] == "overlay")
    missing_folder = str(frontend.server.base / "input" / folder)
    if dialogs:
        assert "ckpt_name" in dialogs and "v1-5-pruned-emaonly.safetensors" in dialogs, dialogs
        assert missing_folder in dialogs and "does not exist" in dialogs, dialogs
    else:
        assert "ckpt_name" in cards and "Load Concept Set" in cards and "folder" in cards, (cards, answer["ui"])
        kept = answer["nodeErrors"] or ""
        assert "v1-5-pruned-emaonly.safetensors" in kept and missing_folder.replace("\\", "\\\\") in kept, kept
        assert "does not exist" in kept, kept
    assert not (frontend.server.base / "input" / folder).exists()


def test_stock_workflow_loads_cleanly_and_runs_on_tiny_models(frontend: Frontend):
    workflow = json.loads((FIXTURES / "stock_txt2img.json").read_text())
    report = frontend.load("stock_txt2img", workflow=workflow)
    assert_loads_cleanly(report)
    assert sorted(n["class_type"] for n in report.prompt.values()) == sorted(n["type"] for n in workflow["nodes"])
    before = _files(frontend.server.base)
    prompt, result = run_with_tiny_models(frontend, report, "sd15", LOWER)
    assert result.status == "success" and not result.errors, result.errors
    assert [n["class_type"] for n in prompt.values()].count(TEST_LOADER) == 1
    assert result.outputs_by_class(prompt) == {"SaveImage": 1}
    assert [p.suffix for p in _files(frontend.server.base) - before] == [".png"]


def test_unknown_node_type_fails_the_load_check(frontend: Frontend):
    report = frontend.load("unknown_node", workflow=json.loads((FIXTURES / "unknown_node.json").read_text()))
    assert report.unknown_nodes == [{"id": 10, "type": "PrismTestNoSuchNode"}]
    # The frontend's own "Some Nodes Are Missing" dialog names it too, or, on frontends that show an
    # "N errors found" card instead (1.4x), the missing-node group of that card's details.
    assert (any(m["kind"] == "dialog" and "PrismTestNoSuchNode" in m["text"] for m in report.ui)
            or any(g["kind"] == "missing-node" and "PrismTestNoSuchNode" in g["text"]
                   for m in report.ui if m["kind"] == "overlay" for g in m["groups"] or [])), report.ui
    with pytest.raises(AssertionError, match="missing node type 'PrismTestNoSuchNode'"):
        assert_loads_cleanly(report)


def _report(**fields) -> LoadReport:
    empty = dict(name="synthetic", startup={"consoleErrors": [], "pageErrors": [], "ui": []}, ui=[], unknown_nodes=[],
                 console_errors=[], page_errors=[], screenshot_errors=[], native_dialogs=[], failed_requests=[],
                 prompt={}, workflow={}, prompt_error=None, screenshot=None, times_ms={})
    return LoadReport(**{**empty, **fields})


def test_only_blocked_lookups_to_other_hosts_are_set_apart():
    """What the sandbox blocks (requests off this machine) is listed apart; every other error still fails."""
    local = "http://127.0.0.1:8188"
    blocked = [
        {"text": "Connecting to 'https://api.comfy.org/comfy-nodes/X/node' violates the following Content Security "
                 "Policy directive: \"connect-src 'self'\". The action has been blocked.", "url": f"{local}/assets/a.js"},
        {"text": "Refused to connect to 'https://api.comfy.org/nodes?node_id=comfy-core' because it violates the "
                 "following Content Security Policy directive: \"connect-src 'self'\".", "url": f"{local}/assets/a.js"},
        {"text": "Fetch API cannot load https://huggingface.co/m.safetensors. Refused to connect because it violates "
                 "the document's Content Security Policy.", "url": f"{local}/assets/b.js"},
        {"text": "Failed to load resource: net::ERR_NAME_NOT_RESOLVED", "url": "https://api.comfy.org/nodes"},
    ]
    real = [
        # the same refusal for the server's own origin, or a loopback name, is not a lookup elsewhere
        {"text": f"Connecting to '{local}/api/x' violates the following Content Security Policy directive: "
                 "\"connect-src 'self'\". The action has been blocked.", "url": f"{local}/assets/a.js"},
        {"text": "Failed to load resource: the server responded with a status of 404 (Not Found)",
         "url": f"{local}/api/view?type=input&filename=missing.png"},
        {"text": "Failed to load resource: net::ERR_CONNECTION_REFUSED", "url": "http://localhost:9/x"},
        # an error that only mentions another host is the frontend's own error, not a blocked request
        {"text": "Failed to fetch https://api.comfy.org/nodes: TypeError: Failed to fetch", "url": f"{local}/assets/a.js"},
        {"text": "TypeError: Cannot read properties of undefined (reading 'widgets')", "url": f"{local}/assets/a.js"},
    ]
    report = _report(console_errors=blocked + real, page_errors=["Error: https://api.comfy.org is down\n    at x"],
                     failed_requests=[{"url": "https://api.comfy.org/nodes", "failure": "csp"},
                                      {"url": f"{local}/api/view?type=input&filename=missing.png", "failure": "HTTP 404"}])
    assert [is_external(u) for u in ("https://api.comfy.org/x", "https://10.0.0.1/", local, "http://[::1]:80/",
                                     "http://localhost/", "data:text/plain,x")] == [True, True, False, False, False, False]
    assert report.blocked_lookups() == [f"console: {e['text']}" for e in blocked] + ["request https://api.comfy.org/nodes: csp"]
    assert report.problems() == [f"console error: {e['text']}" for e in real] + ["page error: Error: https://api.comfy.org is down\n    at x"]
    with pytest.raises(AssertionError, match="did not load cleanly"):
        assert_loads_cleanly(report)
    assert_loads_cleanly(_report(console_errors=blocked, failed_requests=[{"url": "https://api.comfy.org/x", "failure": "csp"}]))


def test_a_broken_workflow_fails_the_load_check_beside_blocked_lookups(frontend: Frontend):
    """A really broken workflow in the real frontend: its Load Image names a file the server does not have
    (the frontend's request for it fails: a local console error) and a node type nobody registered (which
    frontends from about 1.32 look up at api.comfy.org: a blocked lookup). Only the lookup is set apart."""
    report = frontend.load("broken_beside_lookups",
                           workflow=json.loads((FIXTURES / "broken_beside_lookups.json").read_text()))
    problems = report.problems()
    missing_image = [p for p in problems if p.startswith("console error: Failed to load resource")]
    assert missing_image and any("prism_test_no_such_image.png" in r["url"] for r in report.failed_requests), problems
    assert "missing node type 'PrismTestNoSuchNode' (node 2)" in problems
    assert all("api.comfy.org" not in line for line in problems), problems
    with pytest.raises(AssertionError, match="Failed to load resource"):
        assert_loads_cleanly(report)


def test_schema_violation_fails_the_load_check(frontend: Frontend):
    report = frontend.load("invalid_link", workflow=json.loads((FIXTURES / "invalid_link.json").read_text()))
    # The frontend validates against its zod schema and says so in a warning toast, then loads anyway.
    assert any(m["kind"] == "toast" and "zod schema" in m["text"] for m in report.ui), report.ui
    with pytest.raises(AssertionError, match="Invalid workflow against zod schema"):
        assert_loads_cleanly(report)


@pytest.mark.parametrize("path", SHIPPED or [pytest.param(None, marks=pytest.mark.skip(
    reason="no workflows/*.json shipped yet"))], ids=lambda p: p.stem if p else "none")
def test_shipped_workflow_loads_from_the_template_browser_and_runs(frontend: Frontend, path: Path):
    case = WORKFLOW_CASES.get(path.stem, WorkflowCase())
    family = case.family or family_for(path)
    templates = frontend.server.get("/workflow_templates")
    assert path.stem in templates.get(PACK_FOLDER, []), f"the template browser does not list {path.name}: {templates}"
    if family.startswith("klein") and not hasattr(importlib.import_module("comfy.text_encoders.flux"), "KleinTokenizer"):
        pytest.skip("this ComfyUI release has no FLUX.2 Klein (its template's loaders and latent node are not there)")
    report = frontend.load(path.stem, keep=True, template=f"{PACK_FOLDER}/{path.stem}")
    assert_loads_cleanly(report)

    if family == "zimage" and not hasattr(comfy.supported_models, "ZImage"):
        pytest.skip("this ComfyUI release has no Z-Image (the template loads cleanly; it cannot run here)")
    write_concept_images(report.prompt, frontend.server.base / "input", case.concept_images)
    if case.prepare:
        case.prepare(frontend.server)
    before = _files(frontend.server.base)
    log_start = len(frontend.server.log_path.read_text(errors="replace"))
    prompt, result = run_with_tiny_models(frontend, report, family, case.overrides, case.timeout, from_page=True)
    assert result.status == "success" and not result.errors, "\n".join(result.errors)
    run_log = frontend.server.log_path.read_text(errors="replace")[log_start:]
    warned = [line for line in run_log.splitlines() if any(text in line for text in case.log_must_not_contain)]
    assert not warned, "the server warned during the run:\n" + "\n".join(warned[:20])
    outputs = result.outputs_by_class(prompt)
    assert outputs, "the run produced no output"
    for class_type, least in case.expected_outputs.items():
        assert outputs.get(class_type, 0) >= least, f"{class_type}: {outputs.get(class_type, 0)} outputs, expected {least}+"
    new = sorted(p.relative_to(frontend.server.base) for p in _files(frontend.server.base) - before)
    print(f"[{path.stem}] new files: {[str(p) for p in new]}")
    for pattern in case.expected_files:
        assert any(p.match(pattern) for p in new), f"no new file matches {pattern!r}: {new}"
    # Every Save node's name is on the canvas after the run, in a stock Preview Any node.
    saves = {n["class_type"] for n in prompt.values() if n["class_type"] in SAVE_NODES} if case.names_shown else set()
    assert set(shown_names(frontend, prompt, result, path.stem)) == saves
