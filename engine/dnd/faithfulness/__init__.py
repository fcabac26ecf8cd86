"""How far to trust a label: NeuronEval's faithfulness metrics between each neuron's activations over
the whole probing set and each explanation's concept vector (``dnd score``)."""
