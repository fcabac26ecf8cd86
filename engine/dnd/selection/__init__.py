"""Step 3: ranks, scoring functions, multiple labels and the CLIP embedder."""
