"""Step 3: images generated for each unique candidate concept."""
