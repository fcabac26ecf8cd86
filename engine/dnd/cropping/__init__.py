"""Step 1: attention crops of top activating images (paper 3.1, A.1.1)."""
