"""A target model that counts the images it is run on, for tests that must know how many forward
passes a run made without trusting the engine's own counters, and that can hold a run at a chosen
point (the gate) so a test can break something there.

``python:tests.support.counting_target:build`` with ``options: {count_dir: PATH}`` builds the
planted network and appends each forward pass's batch size to ``PATH/<pid>.txt`` (one file per
process, so Ray's actors never write the same file).

With ``gate: FILE`` as well: while FILE exists and holds a number T, a forward pass that starts when
the processes together have already counted T images or more waits until FILE is removed. A run's
forward passes come in a fixed order of stages (pass A over the probe, pass B over the top images,
Step 3 over the generated ones), so T picked from an undisturbed run's counts stops a run inside the
stage the test wants, whatever the timing, and a process killed while waiting never finishes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class CountImages:
    """A forward pre-hook: one line per forward pass, the number of images in its batch."""

    def __init__(self, folder: str, gate: str | None = None):
        self.folder, self.gate = folder, gate

    def __call__(self, module: Any, inputs: tuple) -> None:
        if self.gate is not None:
            self._wait_at_gate()
        with open(os.path.join(self.folder, f"{os.getpid()}.txt"), "a") as handle:
            handle.write(f"{len(inputs[0])}\n")

    def _wait_at_gate(self) -> None:
        while True:
            try:
                threshold = int(Path(self.gate).read_text().strip() or 0)
            except FileNotFoundError:
                return
            if images_counted(self.folder) < threshold:
                return
            time.sleep(0.2)


def build(count_dir: str, gate: str | None = None, weights: str | None = None):
    from dnd.synthetic.network import build as planted

    model, preprocess = planted(weights)
    model.register_forward_pre_hook(CountImages(count_dir, gate))
    return model, preprocess


def images_counted(count_dir: str | Path, exclude_pids: tuple[int, ...] = ()) -> int:
    """Images forwarded by every process but ``exclude_pids`` (the driver's shape probes)."""
    total = 0
    for path in Path(count_dir).glob("*.txt"):
        if int(path.stem) not in exclude_pids:
            total += sum(int(line) for line in path.read_text().split())
    return total
