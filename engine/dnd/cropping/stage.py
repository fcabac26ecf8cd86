"""Step 1, pass B on Ray Data: attention crops of the top-K images, scored by the target model.

Each top-K image is read back once, however many neurons it serves; the actor recomputes its maps,
cuts attention crops for every neuron it serves and scores them (``cropping/actors.py``). The stored
images (``images/``) get the probe images and their crops; the scored crops go to ``on_crops`` as
they stream in, so that the caller keeps its top-K current without holding every crop's activations.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dnd.models.pools import actor_pool_options
from dnd.records import CropInfo, LayerPlan, ProbeImage, images_schema
from dnd.stall import stage_batches

if TYPE_CHECKING:
    from dnd.config import RunConfig
    from dnd.cropping.progress import PassBProgress
    from dnd.store.layout import RunLayout


@dataclass
class PassB:
    """Pass B's result: every crop cut, how many were scored, the probe images that could not be
    read again (ref and reason), the pass's seconds and how many top images a resume took as done."""

    crops: dict[int, CropInfo] = field(default_factory=dict)
    crop_count: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Top images (and their crops) an earlier attempt had finished before its last progress save.
    resumed: int = 0
    resumed_crops: int = 0


def run_pass_b(config: RunConfig, layers: list[LayerPlan], probe: dict[int, ProbeImage], requests: list[dict[str, str]],
               layout: RunLayout, on_crops: Callable[[np.ndarray, list[list[list[int]]], list[np.ndarray]], None],
               progress: PassBProgress | None = None) -> PassB:
    """Crop and score the ``requests`` (one per top-K image: id, ref, the neurons it serves).
    ``progress`` saves the state every so often and, when an earlier attempt saved some, resumes
    from it: only the top images that attempt had not finished are cropped again."""
    import pyarrow as pa
    import ray

    from dnd.cropping.actors import AttentionCrops

    started = time.time()
    result = PassB()
    done, parts = progress.restore(result) if progress is not None else (set(), [])
    # What the earlier attempt ran through the target: the finished top images and their crops.
    result.resumed, result.resumed_crops = len(done), result.crop_count
    todo = [request for request in requests if request["image_id"] not in done]
    use_crops = config.step1.crops and config.step1.crops_per_image > 0 and any(
        json.loads(r["targets"]) for r in requests)
    crop_options = {
        "max_crops": config.step1.crops_per_image if use_crops else 0,
        "iou_threshold": config.step1.crop_iou,
        "whole_image_cap": config.step1.whole_image_iou_cap,
        "min_side": config.step1.min_crop_pixels,
    }
    sink = ImagesParts(layout.step1, parts, images_schema())
    try:
        if not todo:
            return result
        cropped = ray.data.from_items(todo).map_batches(
            AttentionCrops,
            fn_constructor_kwargs={"target_config": config.target.model_dump(mode="json"),
                                   "layers": [layer.name for layer in layers],
                                   "neurons": [layer.neurons for layer in layers],
                                   "summary": config.step1.summary, "crop_options": crop_options,
                                   "storage_options": config.probe.storage_options,
                                   "image_format": config.output.image_format,
                                   "linear_crops": config.step1.linear_crops,
                                   "gradcam_layer": config.step1.gradcam_layer},
            batch_size=max(1, min(16, config.target.batch_size)),
            **actor_pool_options(config.target),
        )
        for batch in stage_batches(cropped, "step 1 pass B (attention crops)", config.target, config):
            records = [_stored_row(batch, row, probe, result) for row in range(len(batch["kind"]))]
            if records:
                sink.write(pa.Table.from_pylist(records, schema=images_schema()))
            index = np.nonzero(batch["kind"] == "crop")[0]
            if index.size:
                result.crop_count += len(index)
                made_for = [json.loads(str(batch["made_for"][row])) for row in index]
                on_crops(batch["key"][index].astype(np.uint64), made_for,
                         [batch[f"act_{i}"][index] for i in range(len(layers))])
            # An actor returns a top image's own row and its crops in the same batch.
            done.update(str(i) for i in batch["image_id"][batch["kind"] == "probe"])
            if progress is not None and progress.due(len(done)):
                progress.save(result, done, sink.commit())
    finally:
        sink.close()
        result.seconds = time.time() - started
    return result


class ImagesParts:
    """``images/`` written as parts: ``commit`` closes the part being written (a whole Parquet file
    from then on) and returns every committed part. Parts an earlier attempt wrote after its last
    progress save (``committed`` lists those it saved) are deleted first: their rows are cut again."""

    def __init__(self, layout: RunLayout, committed: list[str], schema: Any):
        self.layout, self.committed, self.schema = layout, list(committed), schema
        folder = layout.path("images")
        if layout.fs.exists(folder):
            for path in layout.fs.find(folder):
                if path.endswith(".parquet") and path.rsplit("/", 1)[-1] not in self.committed:
                    layout.fs.rm(path)
        self._open: tuple[Any, Any, str] | None = None

    def write(self, table: Any) -> None:
        if self._open is None:
            name = f"part-{len(self.committed):05d}.parquet"
            self._open = (*self.layout.open_writer(self.schema, "images", name), name)
        self._open[1].write_table(table)

    def commit(self) -> list[str]:
        if self._open is not None:
            handle, writer, name = self._open
            writer.close()
            handle.close()
            self.committed.append(name)
            self._open = None
        return list(self.committed)

    def close(self) -> None:
        if not self.committed and self._open is None:  # a run with no row still has an images/ table
            self.write(self.schema.empty_table())
        self.commit()


def _stored_row(batch: dict[str, Any], row: int, probe: dict[int, ProbeImage], result: PassB) -> dict[str, Any]:
    """One ``images/`` row for a probe image or a crop; records crops and unreadable probe images."""
    kind = str(batch["kind"][row])
    identifier = str(batch["image_id"][row])
    key = int(batch["key"][row])
    box = [int(v) for v in batch["box"][row]]
    parent = str(batch["parent_id"][row])
    if kind == "crop":
        made_for = json.loads(str(batch["made_for"][row]))
        result.crops[key] = CropInfo(identifier, parent, box, made_for)
        source, ref = probe[int(parent, 16)].source, ""
    else:
        info = probe[key]
        if batch["error"][row]:
            result.unreadable.append((info.ref, str(batch["error"][row])))
        source, ref, made_for = info.source, info.ref, []
    return {
        "image_id": identifier, "kind": kind, "parent_id": parent, "box": box,
        "width": int(batch["width"][row]), "height": int(batch["height"][row]),
        "source": source, "ref": ref, "made_for": json.dumps(made_for) if made_for else "",
        "data": bytes(batch["data"][row]),
    }
