"""Train the planted network and report how well each neuron carries its planted concept.

    python -m dnd.synthetic.train --out engine/dnd/synthetic/planted_cnn.pt

Training scenes come from the world's *training* distribution, which has none of the probe's
planted biases (red is on every shape there), so a "red" neuron learns red and not circles. Each
planted channel is supervised densely: its target map is the coverage of the objects matching
its concepts, averaged down to the channel's 24×24 grid, which makes its activation maps
localised and its attention crops meaningful. ``fc`` learns the presence of every vocabulary
term. Everything is seeded; on 2 CPUs the default run takes a few minutes.

Quality is reported on fresh scenes (other seeds) from both distributions: per planted neuron,
the AUROC of its spatial-mean activation for "an object with my concept is in the image", and
for ``fc`` the per-class presence accuracy (logit > 0) and AUROC.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnd.synthetic.truth import FC_CLASSES, PLANTED_NEURONS
from dnd.synthetic.world import PROBE, SIZE, TRAINING, Concept, SceneDesign, concept_mask, parse_phrase, render, sample_scene

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


def make_scenes(n: int, seed: int, design: SceneDesign = TRAINING, start: int = 0) -> Batch:
    """Scenes ``start`` … ``start + n - 1`` rendered with their targets; scene i uses its own
    generator ([seed, i]), so a set can be rendered in parallel chunks."""
    import cv2

    per_neuron = neuron_concepts()
    per_class = class_concepts()
    images = np.zeros((n, SIZE, SIZE, 3), dtype=np.uint8)
    maps = np.zeros((n, len(per_neuron), MAP_SIDE, MAP_SIDE), dtype=np.float16)
    present = np.zeros((n, len(per_neuron)), dtype=bool)
    classes = np.zeros((n, len(per_class)), dtype=bool)
    for i in range(n):
        rendered = render(sample_scene(np.random.default_rng([seed, start + i]), design), SIZE)
        images[i] = rendered.image
        for j, concepts in enumerate(per_neuron):
            if any(c.matches(o) for c in concepts for o in rendered.scene.objects):
                present[i, j] = True
                full = concept_mask(rendered, concepts)
                maps[i, j] = cv2.resize(full, (MAP_SIDE, MAP_SIDE), interpolation=cv2.INTER_AREA)
        for j, concept in enumerate(per_class):
            classes[i, j] = any(concept.matches(o) for o in rendered.scene.objects)
    return Batch(images, maps, present, classes)


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
    scenes: int = 32000,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 3e-3,
    threads: int = 2,
    eval_scenes: int = 1500,
    device: str = "cpu",
) -> dict:
    import torch

    from dnd.synthetic.network import new_model

    torch.set_num_threads(threads)
    started = time.time()
    data = make_scenes(scenes, seed)
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
    }
    for title, report in reports.items():
        print_report(title, report)
    return {"seconds": elapsed, **reports}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the planted network of the synthetic world.")
    parser.add_argument("--out", type=Path, required=True, help="where to write the state_dict (.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=32000, help="training scenes rendered once and reused each epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-scenes", type=int, default=1500)
    parser.add_argument("--device", default="cpu", help="torch device; the shipped weights were trained on cpu")
    parser.add_argument("--report", type=Path, default=None, help="also write the quality report as JSON")
    args = parser.parse_args(argv)
    result = train(args.out, args.seed, args.scenes, args.epochs, args.batch_size, args.lr, args.threads, args.eval_scenes, args.device)
    if args.report is not None:
        args.report.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
