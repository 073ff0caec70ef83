"""ComfyUI nodes: thin translations from widgets to prism_core.host calls."""
from .checkpoint_sweep import PrismCheckpointSweep
from .concept_score import PrismConceptScore
from .concept_set import LoadConceptSet
from .conditioning import PrismConditioning
from .optimize_tokens import OptimizePrismTokens
from .lora_files import SavePrismLoRA
from .lora_train import PrismLoRATrain
from .loss_graph import PrismLossGraph
from .token_files import LoadPrismTokens, SavePrismEmbedding, SavePrismTokens

_NODES = [LoadConceptSet, OptimizePrismTokens, PrismConditioning, SavePrismEmbedding, SavePrismTokens, LoadPrismTokens,
          PrismLoRATrain, SavePrismLoRA, PrismLossGraph, PrismConceptScore, PrismCheckpointSweep]

NODE_CLASS_MAPPINGS = {f"ConceptPrism{cls.__name__}": cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {f"ConceptPrism{cls.__name__}": cls.DISPLAY_NAME for cls in _NODES}
