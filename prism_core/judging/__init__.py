"""Judging a concept: prompt sets, CLIP-T / CLIP-I / DINO scores, their table, and the checkpoint sweep's plan."""
