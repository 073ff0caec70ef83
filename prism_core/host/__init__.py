"""Adapters between ConceptPrism's algorithm (prism_core) and ComfyUI's objects.

The only modules of the pack that import ``comfy.*``: text encoding with learned vectors
(`text`), training through frozen host modules (`training_guard`), the Stage 1 backend
(`stage1_backend`) and the UI/runtime glue (`runtime`).
"""
