"""Queue the frontend's API-format prompt on the test server, with tiny models in place of checkpoints.

The only changes made to a prompt are the ones the issue allows, and each is printed:
- every checkpoint loader node becomes the test-only tiny loader of the stated family, keeping its
  node id, so every link to its MODEL/CLIP/VAE outputs (slots 0/1/2 in both) still holds;
- every UNETLoader / DualCLIPLoader / CLIPLoader / VAELoader becomes the test-only loader of that part of the tiny
  models (one output each, as the stock nodes);
- every CLIPVisionLoader becomes the test-only tiny vision loader (one CLIP_VISION output, as the
  stock node): a tiny DINOv2 when its file name says dino, else a tiny CLIP tower projecting to the
  family's text width;
- widgets named in an explicit `overrides` dict get lower values (steps, width/height, resolution).
"""
from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .server import TEST_LOADER, TEST_PART_LOADERS, TEST_VISION_LOADER, ComfyServer

# Stock loaders whose first three outputs are MODEL, CLIP, VAE, like the tiny loader's.
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple", "CheckpointLoader")
VISION_LOADERS = ("CLIPVisionLoader",)


def family_for(workflow_file: Path) -> str:
    """The tiny family standing in for a shipped workflow's checkpoint, from its file name."""
    name = workflow_file.stem.lower()
    if "z-image" in name:
        return "zimage"
    if "klein" in name:
        return "klein4b"
    if "flux" in name:
        return "flux"
    if "sdxl" in name:
        return "sdxl"
    if "sd2" in name:
        return "sd2v"  # the 768-v (v-prediction) variant: the harder of the two SD 2.1 checkpoints
    return "sd15"


def substitute(prompt: dict, family: str, overrides: dict[str, object] | None = None,
               log: Callable[[str], None] = print) -> dict:
    """A copy of `prompt` with tiny checkpoint loaders and lowered widgets; logs every change.

    `overrides` keys are an input name ("steps": applies to every node with a widget of that name)
    or "ClassType.input" (one node type only). Inputs fed by a link are never touched; a key that
    matches nothing is logged too, so a stale mapping shows in the output.
    """
    prompt = copy.deepcopy(prompt)
    for node_id, node in prompt.items():
        if node.get("class_type") in CHECKPOINT_LOADERS:  # a missing node type comes out without class_type
            log(f"substitute node {node_id}: {node['class_type']}({_widgets(node)}) -> {TEST_LOADER}(family={family!r})")
            node["class_type"] = TEST_LOADER
            node["inputs"] = {"family": family}
        elif node.get("class_type") in TEST_PART_LOADERS:
            part_loader = TEST_PART_LOADERS[node["class_type"]]
            log(f"substitute node {node_id}: {node['class_type']}({_widgets(node)}) -> {part_loader}(family={family!r})")
            node["class_type"] = part_loader
            node["inputs"] = {"family": family}
        elif node.get("class_type") in VISION_LOADERS:
            kind = "dinov2" if "dino" in str(node["inputs"].get("clip_name", "")).lower() else "clip"
            log(f"substitute node {node_id}: {node['class_type']}({_widgets(node)}) -> {TEST_VISION_LOADER}(kind={kind!r}, family={family!r})")
            node["class_type"] = TEST_VISION_LOADER
            node["inputs"] = {"kind": kind, "family": family}
    for key, value in (overrides or {}).items():
        class_type, _, name = key.rpartition(".")
        hits = [(i, n) for i, n in prompt.items()
                if name in n["inputs"] and not isinstance(n["inputs"][name], list)
                and class_type in ("", n.get("class_type"))]
        for node_id, node in hits:
            log(f"override node {node_id} {node['class_type']}.{name}: {node['inputs'][name]!r} -> {value!r}")
            node["inputs"][name] = value
        if not hits:
            log(f"override {key!r}: no widget of that name in this prompt")
    return prompt


def _widgets(node: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in node["inputs"].items() if not isinstance(v, list))


@dataclass
class RunResult:
    """How a queued prompt ended: 'success', 'error' (while running) or 'rejected' (by validation).
    `errors` also lists output nodes that validation dropped from a run that otherwise went ahead."""

    status: str
    prompt_id: str | None = None
    outputs: dict = field(default_factory=dict)  # node id -> UI outputs ({"images": [...]}, ...)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def outputs_by_class(self, prompt: dict) -> dict[str, int]:
        """Number of output items (images, texts...) per node class, e.g. {"SaveImage": 1}."""
        counts: dict[str, int] = {}
        for node_id, output in self.outputs.items():
            class_type = prompt[node_id]["class_type"]
            counts[class_type] = counts.get(class_type, 0) + sum(len(v) for v in output.values() if isinstance(v, list))
        return counts


def run_prompt(server: ComfyServer, prompt: dict, workflow: dict | None = None, timeout: float = 180.0,
               post: Callable[[dict, dict | None], tuple[int, dict]] | None = None) -> RunResult:
    """POST to /prompt as the frontend does (the workflow rides along for the PNG metadata), then
    poll /history until the server files the result. On timeout, interrupt the run and raise.

    post(prompt, workflow) -> (HTTP status, answer) queues it some other way, e.g. from a browser page
    (frontend.browser.FrontendBrowser.queue), so that the page receives the run's messages."""
    start = time.monotonic()
    if post is None:
        body = {"prompt": prompt, "client_id": str(uuid.uuid4()), "extra_data": {"extra_pnginfo": {"workflow": workflow}}}
        status, answer = server.post("/prompt", body)
    else:
        status, answer = post(prompt, workflow)
    if status != 200:
        return RunResult("rejected", errors=[str(answer.get("error"))] + _node_errors(answer),
                         seconds=time.monotonic() - start)
    prompt_id = answer["prompt_id"]
    # A 200 can still carry node_errors: ComfyUI drops the output nodes that failed validation and
    # runs the rest, so a half-broken graph would otherwise look like a success.
    dropped = _node_errors(answer)
    while time.monotonic() - start < timeout:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            return RunResult(entry["status"]["status_str"], prompt_id, entry.get("outputs", {}),
                             dropped + _execution_errors(entry["status"]["messages"]), time.monotonic() - start)
        time.sleep(0.5)
    server.post("/interrupt", {})
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def _node_errors(answer: dict) -> list[str]:
    """/prompt's validation errors, one line per node."""
    return [f"node {node_id} ({e.get('class_type')}) failed validation: {e.get('errors')}"
            for node_id, e in answer.get("node_errors", {}).items()]


def _execution_errors(messages: list) -> list[str]:
    """The execution_error / execution_interrupted events of a history entry, one line each."""
    lines = []
    for event, data in messages:
        if event == "execution_error":
            lines.append(f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                         f"{data.get('exception_message')}\n{''.join(data.get('traceback', []))}")
        elif event == "execution_interrupted":
            lines.append(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
    return lines
