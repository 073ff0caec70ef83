"""Socket type names shared by the nodes."""
CONCEPT_SET = "CONCEPT_SET"
PRISM_TOKENS = "PRISM_TOKENS"
CATEGORY = "ConceptPrism"
