"""ConceptPrism's algorithm: losses, token bank, schedules and file formats.

Imports only torch, safetensors, numpy and Pillow, so every piece is testable without ComfyUI.
Everything that touches ``comfy.*`` lives in ``prism_core.host``.
"""
