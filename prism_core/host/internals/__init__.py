"""The host contract: the only modules that touch ComfyUI internals (contract.py lists each one, why, how
it is detected and which test guards it). The rest of prism_core.host uses the host's public surface and
these modules."""
