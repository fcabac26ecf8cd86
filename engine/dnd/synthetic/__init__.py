"""The planted-concept world behind `dnd demo`: a procedural scene renderer with a known
vocabulary (``world``), a captioner and a generator that work in it without weights
(``captioner``, ``generator``: importing them registers the ``synthetic`` backends), and a small
CNN whose neurons were trained to carry known concepts (``network``, ``train``, ``truth``).

Nothing is imported here, so that ``import dnd`` stays fast.
"""
