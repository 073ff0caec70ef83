"""Adapters between ConceptPrism's algorithm (prism_core) and ComfyUI's objects.

The only modules of the pack that import ``comfy.*``: the model family (`family`), text encoding with learned
vectors (`text`), the diffusion model's side of both stages (`diffusion`), the Stage 1 and Stage 2 runs and
backends, Stage 2's LoRA targets and adapters, previews, scoring and the UI/runtime glue (`runtime`). They use the host's public surface; every touch of a ComfyUI internal is in
`internals/` (its `contract` lists each one, how it is detected and which test guards it).
"""
