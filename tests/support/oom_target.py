"""A target model that runs out of memory on batches above a size, for tests of the halving.

``python:tests.support.oom_target:build`` with ``options: {max_images: N}`` builds the planted network
(the weights ``python:dnd.synthetic.network:build`` builds for the same ``weights``), whose forward
pass raises the error PyTorch raises when CUDA memory runs out whenever it gets more than N images. Every forward
pass is logged on the model as ``forward_log``: (images, ran out of memory), so a test can read how
the caller split its batches without trusting the caller's own account.
"""

from __future__ import annotations

from typing import Any


class RunOutAbove:
    """A forward pre-hook: log the batch, and fail it the way CUDA does when it is too large."""

    def __init__(self, max_images: int, log: list[tuple[int, bool]]):
        self.max_images = max_images
        self.log = log

    def __call__(self, module: Any, inputs: tuple) -> None:
        images = len(inputs[0])
        too_many = images > self.max_images
        self.log.append((images, too_many))
        if too_many:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate 2.00 GiB for {images} images")


def build(max_images: int, weights: str | None = None):
    from dnd.synthetic.network import build as planted

    model, preprocess = planted(weights)
    model.forward_log = []
    model.register_forward_pre_hook(RunOutAbove(max_images, model.forward_log))
    return model, preprocess
