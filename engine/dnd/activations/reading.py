"""Pass A's reading tasks: probe bytes read, identified and prepared for the target model."""

from __future__ import annotations

from typing import Any

from dnd.models.actors import prepare_images
from dnd.probe.sources import execute_read, image_id


def read_and_prepare(tasks: dict[str, Any], input_spec: Any, preprocess: Any, storage_options: dict) -> dict[str, Any]:
    """One read task → a batch of prepared probe images (``pixels``) with their ids and skip reasons."""
    rows: list[dict[str, Any]] = []
    for i in range(len(tasks["kind"])):
        task = {name: tasks[name][i] for name in tasks}
        task["refs"] = list(task["refs"])
        rows.extend(execute_read(task, storage_options))
    ids = [image_id(row["data"]) if row["data"] else "" for row in rows]
    return prepare_images(
        ids, [row["data"] for row in rows], [row["error"] for row in rows], input_spec, preprocess,
        refs=[row["ref"] for row in rows], sources=[row["source"] for row in rows],
    )
