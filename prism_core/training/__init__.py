"""The algorithm: Stage 1 (Algorithm 1: target and residual tokens, Eq. 2, 4, 5) and Stage 2 (Algorithm 2: the
attention LoRA) as host-free loops, their losses, sampling plans, prompts, initial vectors and settings."""
