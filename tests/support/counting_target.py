"""A target model that counts the images it is run on, for tests that must know how many forward
passes a run made without trusting the engine's own counters.

``python:tests.support.counting_target:build`` with ``options: {count_dir: PATH}`` builds the
planted network and appends each forward pass's batch size to ``PATH/<pid>.txt`` (one file per
process, so Ray's actors never write the same file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class CountImages:
    """A forward pre-hook: one line per forward pass, the number of images in its batch."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self, module: Any, inputs: tuple) -> None:
        with open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a") as handle:
            handle.write(f"{len(inputs[0])}\n")


def build(count_dir: str, weights: str | None = None):
    from dnd.synthetic.network import build as planted

    model, preprocess = planted(weights)
    model.register_forward_pre_hook(CountImages(count_dir))
    return model, preprocess


def images_counted(count_dir: str | Path, exclude_pids: tuple[int, ...] = ()) -> int:
    """Images forwarded by every process but ``exclude_pids`` (the driver's shape probes)."""
    total = 0
    for path in Path(count_dir).glob("*.txt"):
        if int(path.stem) not in exclude_pids:
            total += sum(int(line) for line in path.read_text().split())
    return total
