"""ConceptPrism's algorithm and formats, host-free: `training/` (both stages' loops, losses, plans, prompts),
`formats/` (token banks, LoRA files, names), `concept_input/` (the concept set), `judging/` (scores, prompt
sets, the sweep's plan) and `pictures/` (previews, loss and sweep plots).

Imports only torch, safetensors, numpy and Pillow, so every piece is testable without ComfyUI.
Everything that touches ``comfy.*`` lives in ``prism_core.host``.
"""
