"""ComfyUI nodes: thin translations from widgets to prism_core.host calls.

The mappings are dict literals on purpose: ComfyUI-Manager finds which pack provides a node id
("Install Missing Custom Nodes") by reading the string keys of the literal mapping below from the
source, without running it (tests/core/test_manager_scan.py checks what it finds).
"""
from .checkpoint_sweep import PrismCheckpointSweep
from .concept_score import PrismConceptScore
from .concept_set import LoadConceptSet
from .conditioning import PrismConditioning
from .optimize_tokens import OptimizePrismTokens
from .lora_files import SavePrismLoRA
from .lora_train import PrismLoRATrain
from .loss_graph import PrismLossGraph
from .token_files import LoadPrismTokens, SavePrismEmbedding, SavePrismTokens

NODE_CLASS_MAPPINGS = {
    "ConceptPrismLoadConceptSet": LoadConceptSet,
    "ConceptPrismOptimizePrismTokens": OptimizePrismTokens,
    "ConceptPrismPrismConditioning": PrismConditioning,
    "ConceptPrismSavePrismEmbedding": SavePrismEmbedding,
    "ConceptPrismSavePrismTokens": SavePrismTokens,
    "ConceptPrismLoadPrismTokens": LoadPrismTokens,
    "ConceptPrismPrismLoRATrain": PrismLoRATrain,
    "ConceptPrismSavePrismLoRA": SavePrismLoRA,
    "ConceptPrismPrismLossGraph": PrismLossGraph,
    "ConceptPrismPrismConceptScore": PrismConceptScore,
    "ConceptPrismPrismCheckpointSweep": PrismCheckpointSweep,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ConceptPrismLoadConceptSet": "Load Concept Set (ConceptPrism)",
    "ConceptPrismOptimizePrismTokens": "Optimize Prism Tokens (ConceptPrism Stage 1)",
    "ConceptPrismPrismConditioning": "Prism Conditioning (ConceptPrism)",
    "ConceptPrismSavePrismEmbedding": "Save Prism Embedding (ConceptPrism)",
    "ConceptPrismSavePrismTokens": "Save Prism Tokens (ConceptPrism)",
    "ConceptPrismLoadPrismTokens": "Load Prism Tokens (ConceptPrism)",
    "ConceptPrismPrismLoRATrain": "Prism LoRA Train (ConceptPrism Stage 2)",
    "ConceptPrismSavePrismLoRA": "Save Prism LoRA (ConceptPrism)",
    "ConceptPrismPrismLossGraph": "Prism Loss Graph (ConceptPrism)",
    "ConceptPrismPrismConceptScore": "Prism Concept Score (ConceptPrism)",
    "ConceptPrismPrismCheckpointSweep": "Prism Checkpoint Sweep (ConceptPrism)",
}
