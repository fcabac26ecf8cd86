"""Step 1: target-model activations and the streaming top-K per (layer, neuron)."""
