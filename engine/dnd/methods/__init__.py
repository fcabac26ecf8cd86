"""Describers beyond Steps 2–3 that reuse Step 1: each writes the same ``neurons/`` schema, so
``dnd show``, ``dnd report``, ``dnd eval fc`` and ``dnd score`` read their runs unchanged."""
