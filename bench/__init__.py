"""ConceptPrism benchmarks (not part of the node pack; ComfyUI never imports this folder). See README.md."""
