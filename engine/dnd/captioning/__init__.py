"""Step 2A: one caption per unique image (probe image or attention crop)."""
