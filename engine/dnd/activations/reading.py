"""Pass A's reading tasks: probe bytes read, identified and prepared for the target model."""

from __future__ import annotations

from typing import Any

import numpy as np

from dnd.models.actors import prepare_images
from dnd.probe.sources import execute_read, image_id


def read_and_prepare(tasks: dict[str, Any], input_spec: Any, preprocess: Any, storage_options: dict,
                     taken: dict[int, list[str]] | None = None) -> dict[str, Any]:
    """Read tasks → a batch of prepared probe images (``pixels``) with their ids and skip reasons.

    Each row also carries its read task (``task``) and how many rows that task holds (``task_rows``),
    so the driver knows when a task is finished; ``taken`` (a resumed pass A) names per task the refs
    an earlier attempt already took, which are neither decoded nor run through the model again."""
    rows: list[dict[str, Any]] = []
    owners: list[tuple[int, int]] = []
    for i in range(len(tasks["kind"])):
        task = {name: tasks[name][i] for name in tasks}
        number = int(task.pop("task"))
        task["refs"] = list(task["refs"])
        read = execute_read(task, storage_options)
        done = set((taken or {}).get(number, ()))
        fresh = [row for row in read if row["ref"] not in done]
        rows.extend(fresh)
        owners.extend([(number, len(read))] * len(fresh))
    ids = [image_id(row["data"]) if row["data"] else "" for row in rows]
    batch = prepare_images(
        ids, [row["data"] for row in rows], [row["error"] for row in rows], input_spec, preprocess,
        refs=[row["ref"] for row in rows], sources=[row["source"] for row in rows],
    )
    batch["task"] = np.array([task for task, _ in owners], dtype=np.int64)
    batch["task_rows"] = np.array([size for _, size in owners], dtype=np.int64)
    return batch
