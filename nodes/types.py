"""Socket type names shared by the nodes."""
CONCEPT_SET = "CONCEPT_SET"
PRISM_TOKENS = "PRISM_TOKENS"
CATEGORY = "ConceptPrism"
LORA_MODEL = "LORA_MODEL"  # the host's type: a {tensor name: tensor} LoRA state dict (ours carries header metadata too)
LOSS_MAP = "LOSS_MAP"      # the host's type: {"loss": [per-step values]}
