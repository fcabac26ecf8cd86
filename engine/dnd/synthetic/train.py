"""Train the planted network and report how well each neuron carries its planted concept.

    python -m dnd.synthetic.train --out engine/dnd/synthetic/planted_cnn.pt

Training scenes come from the world's *training* distribution, which has none of the probe's
planted biases (red is on every shape there), so a "red" neuron learns red and not circles. Each
planted channel is supervised densely: its target map is the coverage of the objects matching
its concepts, averaged down to the channel's 24×24 grid, which makes its activation maps
localised and its attention crops meaningful. ``fc`` learns the presence of every vocabulary
term. Everything is seeded.

Quality is reported on fresh scenes (other seeds) from both distributions: per planted neuron,
the AUROC of its spatial-mean activation for "an object with my concept is in the image", and
for ``fc`` the per-class presence accuracy (logit > 0) and AUROC.

The shipped weights came from ``--device cuda --workers 7`` with the other defaults (48,000 scenes,
20 epochs; about 4 minutes on one H200). On 2 CPUs the same command with ``--device cpu`` takes
about 90 minutes and gives equivalent, not bit-identical, weights.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnd.synthetic.truth import FC_CLASSES, PLANTED_NEURONS
from dnd.synthetic.world import PROBE, SIZE, TRAINING, Concept, SceneDesign, parse_phrase, render, sample_scene

#: Side of the planted layer's maps (the network's input is SIZE; the trunk downsamples by 4).
MAP_SIDE = SIZE // 4


def neuron_concepts() -> list[list[Concept]]:
    return [[parse_phrase(c) for c in n.concepts] for n in PLANTED_NEURONS]  # type: ignore[misc]


def class_concepts() -> list[Concept]:
    return [parse_phrase(c) for c in FC_CLASSES]  # type: ignore[misc]


@dataclass
class Batch:
    images: np.ndarray  # (n, SIZE, SIZE, 3) uint8
    maps: np.ndarray  # (n, neurons, MAP_SIDE, MAP_SIDE) float16 coverage targets
    present: np.ndarray  # (n, neurons) bool: a matching object is in the image
    classes: np.ndarray  # (n, classes) bool


#: Share of training images that are attention-crop-like views instead of whole scenes.
CROP_SHARE = 0.45
#: A shape is only "seen" in a crop that shows this much of the object; a colour or a texture is
#: seen in any part of it. (A close-up inside a red circle shows red, not a circle.)
MIN_VISIBLE_FOR_SHAPE = 0.6


def _crop_box(scene, side: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box like the engine's attention crops: mostly around one object with some margin (at
    times cutting it), otherwise anywhere — including inside a large object. Boxes need not be
    square; the network's preprocess stretches them to its input."""
    if scene.objects and rng.random() < 0.8:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        x0, y0, x1, y1 = obj.bbox(side)
        # From well inside the object (the engine's Otsu box of a texture or colour neuron can be
        # a patch of one large object) to loose boxes with a margin of background around it.
        base = max(x1 - x0, y1 - y0) * rng.uniform(0.5, 1.6)
        cx = (x0 + x1) / 2 + rng.uniform(-0.25, 0.25) * base
        cy = (y0 + y1) / 2 + rng.uniform(-0.25, 0.25) * base
    else:
        base = rng.uniform(0.15, 0.6) * side
        cx, cy = rng.uniform(0, side, size=2)
    w = max(8.0, base * rng.uniform(0.8, 1.25))
    h = max(8.0, base * rng.uniform(0.8, 1.25))
    bx0 = int(np.clip(round(cx - w / 2), 0, side - 8))
    by0 = int(np.clip(round(cy - h / 2), 0, side - 8))
    bx1 = int(np.clip(round(cx + w / 2), bx0 + 8, side))
    by1 = int(np.clip(round(cy + h / 2), by0 + 8, side))
    return bx0, by0, bx1, by1


def _view(rendered, box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, masks, visible share per object) of a whole scene or of a crop stretched to the
    network's input exactly as its preprocess stretches one (PIL bilinear)."""
    import cv2
    from PIL import Image

    if box is None:
        return rendered.image, rendered.masks, np.ones(len(rendered.masks))
    x0, y0, x1, y1 = box
    image = np.asarray(Image.fromarray(rendered.image[y0:y1, x0:x1]).resize((SIZE, SIZE), Image.BILINEAR))
    totals = rendered.masks.sum(axis=(1, 2))
    inside = rendered.masks[:, y0:y1, x0:x1]
    visible = inside.sum(axis=(1, 2)) / np.maximum(totals, 1e-6)
    masks = np.stack([cv2.resize(m, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for m in inside]) if len(inside) else rendered.masks
    return image, masks, visible


def _seen(concept: Concept, obj, visible: float, coverage: float) -> bool:
    if not concept.matches(obj) or coverage < 4.0:
        return False
    return concept.shape is None or visible >= MIN_VISIBLE_FOR_SHAPE


def make_scenes(
    n: int, seed: int, design: SceneDesign = TRAINING, start: int = 0, crop_share: float = 0.0
) -> Batch:
    """Scenes ``start`` … ``start + n - 1`` rendered with their targets; scene i uses its own
    generator ([seed, i]), so a set can be rendered in parallel chunks. A ``crop_share`` of them
    are shown as attention-crop-like views (see ``_crop_box``) instead of whole."""
    import cv2

    per_neuron = neuron_concepts()
    per_class = class_concepts()
    images = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    maps = np.zeros((n, len(per_neuron), MAP_SIDE, MAP_SIDE), dtype=np.float16)
    present = np.zeros((n, len(per_neuron)), dtype=bool)
    classes = np.zeros((n, len(per_class)), dtype=bool)
    for i in range(n):
        scene = sample_scene(np.random.default_rng([seed, start + i]), design)
        rendered = render(scene, SIZE)
        # The view is drawn from its own generator so that scene i is the same with or without crops.
        view_rng = np.random.default_rng([seed, start + i, 1])
        box = _crop_box(scene, SIZE, view_rng) if view_rng.random() < crop_share else None
        image, masks, visible = _view(rendered, box)
        images[i] = image
        coverage = masks.sum(axis=(1, 2))
        for j, concepts in enumerate(per_neuron):
            full = np.zeros((SIZE, SIZE), dtype=np.float32)
            for k, obj in enumerate(scene.objects):
                if any(_seen(c, obj, visible[k], coverage[k]) for c in concepts):
                    np.maximum(full, masks[k], out=full)
                    present[i, j] = True
            if present[i, j]:
                maps[i, j] = cv2.resize(full, (MAP_SIDE, MAP_SIDE), interpolation=cv2.INTER_AREA)
        for j, concept in enumerate(per_class):
            classes[i, j] = any(_seen(concept, o, visible[k], coverage[k]) for k, o in enumerate(scene.objects))
    return Batch(images, maps, present, classes)


def _render_chunk(args: tuple) -> Batch:
    return make_scenes(*args)


def make_scenes_parallel(n: int, seed: int, design: SceneDesign = TRAINING, crop_share: float = 0.0,
                         workers: int = 1) -> Batch:
    """:func:`make_scenes` split over ``workers`` processes; the same scenes as one process renders,
    since scene i always uses its own generator."""
    if workers <= 1 or n < 2 * workers:
        return make_scenes(n, seed, design, crop_share=crop_share)
    from concurrent.futures import ProcessPoolExecutor

    bounds = np.linspace(0, n, workers + 1).astype(int)
    jobs = [(int(b - a), seed, design, int(a), crop_share) for a, b in zip(bounds[:-1], bounds[1:])]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    return Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "maps", "present", "classes")))


def to_input(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    import torch

    from dnd.synthetic.network import MEAN, STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney, ties counted half); NaN with one class only."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(model, data: Batch, batch_size: int = 256) -> dict:
    """Per-neuron AUROC and mean activations with/without the concept; fc accuracy and AUROC."""
    import torch

    model.eval()
    means, logits = [], []
    maps_seen = {}

    def keep(_m, _i, out):
        maps_seen["planted"] = out

    handle = model.planted.register_forward_hook(keep)
    try:
        with torch.no_grad():
            for start in range(0, len(data.images), batch_size):
                out = model(to_input(data.images[start : start + batch_size]))
                logits.append(out.numpy())
                means.append(maps_seen["planted"].mean(dim=(2, 3)).numpy())
    finally:
        handle.remove()
    act = np.concatenate(means)
    fc = np.concatenate(logits)
    neurons = []
    for j, neuron in enumerate(PLANTED_NEURONS):
        pos = data.present[:, j]
        neurons.append(
            {
                "neuron": j,
                "kind": neuron.kind,
                "concepts": list(neuron.concepts),
                "auroc": auroc(act[:, j], pos),
                "mean_with": float(act[pos, j].mean()) if pos.any() else float("nan"),
                "mean_without": float(act[~pos, j].mean()) if (~pos).any() else float("nan"),
            }
        )
    predicted = fc > 0
    classes = [
        {
            "neuron": j,
            "class": name,
            "accuracy": float((predicted[:, j] == data.classes[:, j]).mean()),
            "auroc": auroc(fc[:, j], data.classes[:, j]),
        }
        for j, name in enumerate(FC_CLASSES)
    ]
    return {
        "planted": neurons,
        "fc": classes,
        "fc_presence_accuracy": float((predicted == data.classes).mean()),
        "fc_exact_match": float((predicted == data.classes).all(axis=1).mean()),
    }


def print_report(title: str, report: dict) -> None:
    print(f"\n== {title}")
    print(f"{'neuron':>6}  {'kind':<13} {'concepts':<30} {'AUROC':>6} {'mean with':>10} {'without':>8}")
    for row in report["planted"]:
        print(
            f"{row['neuron']:>6}  {row['kind']:<13} {' | '.join(row['concepts']):<30} "
            f"{row['auroc']:>6.3f} {row['mean_with']:>10.4f} {row['mean_without']:>8.4f}"
        )
    print(f"fc presence accuracy {report['fc_presence_accuracy']:.4f}, exact match {report['fc_exact_match']:.4f}")
    print("  " + ", ".join(f"{c['class']} {c['accuracy']:.3f}/{c['auroc']:.3f}" for c in report["fc"]))


def fit(
    model,
    data: Batch,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    log=print,
) -> None:
    """Train ``model`` in place on ``data``: dense BCE on the planted maps plus BCE on fc presence."""
    import torch
    import torch.nn.functional as F

    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(data.images)
    per_epoch = n // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.15)
    # Concept pixels are a few percent of a map; weighting them up keeps small objects visible.
    pos_weight = torch.full((len(PLANTED_NEURONS), 1, 1), 3.0, device=device)
    generator = np.random.default_rng([seed, 10**6])
    started = time.time()
    for epoch in range(epochs):
        model.train()
        order = generator.permutation(n)
        total = 0.0
        for b in range(per_epoch):
            idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
            x = to_input(data.images[idx]).to(device)
            maps = torch.from_numpy(data.maps[idx].astype(np.float32)).to(device)
            classes = torch.from_numpy(data.classes[idx].astype(np.float32)).to(device)
            # Half-turns leave every concept as it is. Mirroring would not: it turns the world's
            # one diagonal into the other, and "one diagonal but not both" (stripes, versus the
            # two crossed diagonals of a checkerboard) is an exclusive-or that learns slowly.
            if generator.random() < 0.5:
                x, maps = x.flip(2, 3), maps.flip(2, 3)
            fc, planted = model.training_outputs(x)
            loss = F.binary_cross_entropy_with_logits(planted, maps, pos_weight=pos_weight)
            loss = loss + F.binary_cross_entropy_with_logits(fc, classes)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
        log(f"epoch {epoch + 1}/{epochs}: loss {total / per_epoch:.4f} ({time.time() - started:.0f}s)")
    model.to("cpu").eval()


def train(
    out: Path,
    seed: int = 0,
    scenes: int = 48000,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    threads: int = 2,
    eval_scenes: int = 1500,
    device: str = "cpu",
    workers: int = 1,
) -> dict:
    import torch

    from dnd.synthetic.network import new_model

    torch.set_num_threads(threads)
    started = time.time()
    data = make_scenes_parallel(scenes, seed, crop_share=CROP_SHARE, workers=workers)
    print(f"rendered {scenes} training scenes in {time.time() - started:.1f}s", flush=True)
    model = new_model(seed)
    fit(model, data, epochs, batch_size, lr, seed, device, log=lambda m: print(m, flush=True))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    elapsed = time.time() - started
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB) after {elapsed:.0f}s", flush=True)

    reports = {
        "training distribution": evaluate(model, make_scenes(eval_scenes, seed + 1)),
        "probe distribution": evaluate(model, make_scenes(eval_scenes, seed + 2, PROBE)),
        "crops of probe scenes": evaluate(model, make_scenes(eval_scenes, seed + 3, PROBE, crop_share=1.0)),
    }
    for title, report in reports.items():
        print_report(title, report)
    return {"seconds": elapsed, **reports}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the planted network of the synthetic world.")
    parser.add_argument("--out", type=Path, required=True, help="where to write the state_dict (.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=48000, help="training scenes rendered once and reused each epoch")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-scenes", type=int, default=1500)
    parser.add_argument("--device", default="cpu", help="torch device (the shipped weights: cuda; cpu gives equivalent, not identical, weights)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the training scenes")
    parser.add_argument("--report", type=Path, default=None, help="also write the quality report as JSON")
    args = parser.parse_args(argv)
    result = train(args.out, args.seed, args.scenes, args.epochs, args.batch_size, args.lr, args.threads, args.eval_scenes, args.device, args.workers)
    if args.report is not None:
        args.report.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
