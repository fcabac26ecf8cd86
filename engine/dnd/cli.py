"""The ``dnd`` command. Only argparse at import time, so ``dnd --help`` is instant."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="URI", help="output location (overrides output.uri)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set step1.top_k=5 --set neurons=0:16 (repeatable)",
    )


def _cmd_dissect(args: argparse.Namespace) -> int:
    from dnd.config import load_config
    from dnd.pipeline import dissect

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.uri={args.out}")
    config = load_config(args.config, overrides)
    results = dissect(config, overwrite=args.overwrite)
    counts = results.manifest["counts"]["status"]
    print(results.uri)
    failed = sum(n for status, n in counts.items() if status != "ok")
    return 0 if failed == 0 else 3


def _cmd_compare(args: argparse.Namespace) -> int:
    from dnd.methods.compare import compare

    summary = compare(args.config, args.methods, args.out, concepts=args.concepts, options=args.variant_options,
                      overrides=args.overrides, own_caches=args.own_caches, overwrite=args.overwrite)
    print_comparison(summary)
    failed = sum(m["neurons"] - m["ok"] for m in summary["summary"].values())
    return 0 if failed == 0 else 3


def print_comparison(summary: dict[str, Any]) -> None:
    """Per layer, each method's mean faithfulness; then each method's cost after the shared Step 1."""
    methods = summary["methods"]
    per = summary["summary"]
    width = max(12, *(len(m) + 2 for m in methods))

    def line(title: str, values: list[str]) -> str:
        return f"{title:<34}" + "".join(f"{v:>{width}}" for v in values)

    def number(value: Any, form: str) -> str:
        return format(value, form) if isinstance(value, (int, float)) else "n/a"

    step1 = summary.get("step1") or {}
    print(f"compared {', '.join(methods)} on one Step 1 ({step1.get('target_forward_images', '?')} target-model "
          f"images, computed by {step1.get('computed_by', 'an earlier attempt')})")
    print(line("", methods))
    layers = list(dict.fromkeys(layer for name in methods for layer in per[name]["per_layer"]))
    for layer in layers:
        for metric in ("correlation", "auprc"):
            values = [number(per[name]["per_layer"].get(layer, {}).get(metric), ".3f") for name in methods]
            print(line(f"{layer}: mean {metric}", values))
    if not layers:
        print("  (not scored: give --concepts, or a faithfulness section in the config)")
    print(line("neurons ok", [f"{per[n]['ok']}/{per[n]['neurons']}" for n in methods]))
    print(line("seconds per neuron after Step 1", [number(per[n]["seconds_per_neuron"], ".4f") for n in methods]))
    root = summary["runs"][methods[0]].rsplit("/", 1)[0]
    print(f"scored against: {summary.get('concepts') or 'nothing'}; runs: {', '.join(summary['runs'].values())}")
    print(f"per-neuron table: {root}/table/   report with a method switcher: dnd report {root}")


def _cmd_layers(args: argparse.Namespace) -> int:
    from dnd.models.recorder import layer_sizes
    from dnd.models.target import build_target

    target = build_target(args.model, args.weights, None, {})
    for name, (size, shape) in layer_sizes(target, None).items():
        print(f"{name}\t{size}\t{'x'.join(str(s) for s in shape)}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    from dnd.errors import ConfigError
    from dnd.results import Results
    from dnd.store.layout import RunLayout
    from dnd.store.neurons import read_neurons

    compared = RunLayout(args.uri).read_json("_COMPARE")
    if compared is not None:
        runs = ", ".join(compared.get("runs", {}).values())
        raise ConfigError(f"{args.uri!r} holds a comparison of several runs (dnd compare); show one of them: {runs}")
    # Only the columns printed, and only the shown rows made into Python objects: a run of 37k neurons
    # has megabytes of crops, captions and candidates that show never prints.
    table = read_neurons(Results(args.uri).layout, ["layer", "neuron", "status", "label", "top_images", "faithfulness"])
    if args.layer:
        table = table.filter(pc.equal(table["layer"], args.layer))
    total = table.num_rows
    stop = args.limit if args.limit >= 0 else max(total + args.limit, 0)  # as pandas' head(limit) counts
    # Plain rows, not pandas: importing pandas alone takes longer than reading the table.
    shown = table.slice(0, stop).to_pylist()
    for row in shown:
        tops = ", ".join(
            f"{t['image_id'][:8]}{'*' if t['is_crop'] else ''}={t['activation']:.3g}" for t in list(row["top_images"])[:3]
        )
        label = row["label"] if isinstance(row["label"], str) else "-"
        # After dnd score: how faithful the label is over the whole probing set.
        scores = row.get("faithfulness")
        faithful = ""
        if isinstance(scores, dict):
            shown_scores = [f"{name}={scores[name]:.2f}" for name in ("correlation", "auprc") if scores.get(name) is not None]
            faithful = f"  [{' '.join(shown_scores) or 'undefined'} vs {scores.get('concepts')}]"
        print(f"{row['layer']:<24} {row['neuron']:>6}  {row['status']:<7} {label:<36} {tops}{faithful}")
    if total > len(shown):
        print(f"... {total - len(shown)} more rows (--limit)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from dnd.synthetic.demo import demo_config, run_demo

    if args.print_config:
        import yaml

        print(yaml.safe_dump(demo_config(args.out, method=args.method), sort_keys=False))
        return 0
    other = "paper" if args.method == "dnd" else "dnd"
    results, summary = run_demo(args.out, probe_images=args.images, overwrite=args.overwrite, method=args.method)
    # The other method on the same world, beside it: how much dnd's additions change the recovery.
    beside_out = f"{args.out.rstrip('/')}-{other}"
    beside, theirs = run_demo(beside_out, probe_images=args.images, overwrite=args.overwrite, method=other)
    status = results.manifest["counts"]["status"]
    print(f"method: {args.method}; beside it, method {other} at {beside.uri}")
    print(f"results: {results.uri}   (dnd show {results.uri})")
    print(f"neurons: {sum(status.values())}  status: {status}  time: {results.manifest['timings_s']['total_s']:.0f}s")

    def also(value: float | None) -> str:
        return f"   ({other}: {value:.0%})" if value is not None else ""

    for layer, accuracy in summary["accuracy"].items():
        print(f"recovered {layer}: {accuracy:.0%} of {summary['neurons'][layer]} neurons named their planted concept"
              f"{also(theirs['accuracy'].get(layer))}")
    for kind, accuracy in summary["accuracy_by_kind"].items():
        print(f"  {kind:<14} {accuracy:.0%}{also(theirs['accuracy_by_kind'].get(kind))}")
    if summary["polysemantic_both_named"] is not None:
        print(f"  polysemantic neurons with both concepts among their labels: {summary['polysemantic_both_named']:.0%}"
              f"{also(theirs['polysemantic_both_named'])}")
    mine, others = (run.manifest.get("faithfulness", {}).get("per_layer", {}) for run in (results, beside))
    for layer, scores in mine.items():
        theirs_scores = others.get(layer, {})

        def mean(scores: dict, metric: str) -> str:
            value = (scores.get(metric) or {}).get("mean")
            return f"{value:.2f}" if value is not None else "n/a"

        print(f"faithful {layer}: labels against the truth over every probe image: correlation {mean(scores, 'correlation')}, "
              f"AUPRC {mean(scores, 'auprc')}   ({other}: {mean(theirs_scores, 'correlation')}, {mean(theirs_scores, 'auprc')})")
    for miss in summary["misses"][:10]:
        print(f"  missed {miss['layer']}/{miss['neuron']}: truth {miss['truth']}, label {miss['label']!r}")
    failed = [s for run in (results, beside) for s, n in run.manifest["counts"]["status"].items() if s != "ok" and n]
    return 3 if failed else 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dnd.serve.launch import load_deploy_config, serve_forever

    config = load_deploy_config(args.config, host=args.host, port=args.port)
    return serve_forever(config, log=lambda message: print(message, file=sys.stderr, flush=True), detach=args.detach)


def _cmd_config_reference(_args: argparse.Namespace) -> int:
    from dnd.config import config_reference

    print(config_reference())
    return 0


def _add_compare(sub: Any) -> None:
    """``dnd compare``: several methods on one shared Step 1."""
    p = sub.add_parser(
        "compare", help="describe the same neurons with several methods on one shared Step 1 and compare their "
        "labels, faithfulness and cost per neuron",
    )
    p.add_argument("config", help="run configuration YAML (its target, layers, neurons, probe and Step 1 are shared)")
    p.add_argument("--methods", default="paper,dnd,clip-dissect",
                   help="comma-separated methods (default paper,dnd,clip-dissect); NAME=METHOD adds a named variant, "
                        "e.g. hybrid=dnd")
    p.add_argument("--with", dest="variant_options", action="append", default=[], metavar="NAME:KEY=VALUE",
                   help="an option of one method only, e.g. --with hybrid:candidates.clip_dissect_top=5 (repeatable)")
    p.add_argument("--concepts", help="concept source every method is scored against (as dnd score --concepts; "
                                      "default: the config's faithfulness section, else clip)")
    p.add_argument("--own-caches", action="store_true",
                   help="a cache per method, so each one's seconds per neuron count every model call it needs "
                        "(default: one shared cache; a method reuses what an earlier one computed)")
    p.add_argument("--overwrite", action="store_true", help="replace runs of another configuration under --out")
    _add_config_args(p)
    p.set_defaults(func=_cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnd",
        description="Describe-and-Dissect at scale: natural-language descriptions of vision-network neurons on Ray.",
    )
    parser.add_argument(
        "--ray-logs", action="store_true",
        help="also show Ray's own log output on the terminal (execution plans, native log lines); "
             "by default it goes only to Ray's session log files (same as DND_RAY_LOGS=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dissect", help="describe the neurons of a network (Steps 1-3) and write Parquet results")
    p.add_argument("config", help="run configuration YAML")
    _add_config_args(p)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume", action="store_true",
        help="continue the run already at --out if it has the same config (the default; finished work is reused)",
    )
    resume.add_argument(
        "--overwrite", action="store_true",
        help="replace a run of a different config at --out instead of refusing (its caches are kept)",
    )
    p.set_defaults(func=_cmd_dissect)

    p = sub.add_parser("demo", help="run the whole engine offline on the built-in planted-concept world and score it")
    p.add_argument("--out", default="dnd-demo", metavar="URI", help="output location (default ./dnd-demo)")
    p.add_argument("--images", type=int, default=600, help="probe images (default 600)")
    p.add_argument("--method", choices=["dnd", "paper"], default="dnd",
                   help="method of the demo's run (default dnd); the other method runs beside it, at URI-<other>")
    p.add_argument("--print-config", action="store_true", help="print the demo's run configuration and exit")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run of another configuration (e.g. other --images) at --out; caches are kept")
    p.set_defaults(func=_cmd_demo)

    _add_compare(sub)

    p = sub.add_parser("layers", help="list a model's layers with their neuron counts (no weights are downloaded)")
    p.add_argument("model", help="model spec, e.g. torchvision:resnet50")
    p.add_argument("--weights", default="none", help="weights to build with (default none: no download)")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("show", help="print a run's neurons: layer, neuron, status, label, top images")
    p.add_argument("uri", help="run location")
    p.add_argument("--layer", help="only this layer")
    p.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser(
        "serve", help="serve the captioner and generator as an HTTP API (Ray Serve); no CONFIG: random-tiny models on CPU",
    )
    p.add_argument("config", nargs="?", help="Serve config YAML, e.g. deploy/serve.yaml (default: deploy/serve-tiny.yaml's app)")
    p.add_argument("--host", help="listen address (overrides http_options.host; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (overrides http_options.port; default 8000)")
    p.add_argument("--detach", action="store_true",
                   help="deploy to the running Ray cluster (ray start) and return instead of serving until Ctrl-C")
    p.set_defaults(func=_cmd_serve)

    from dnd.cli_results import add_commands

    add_commands(sub)

    p = sub.add_parser("config-reference", help="print every run-configuration key with its default and meaning")
    p.set_defaults(func=_cmd_config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dnd.errors import DndError
    from dnd.ray_output import NativeLogFilter

    if args.ray_logs:
        os.environ["DND_RAY_LOGS"] = "1"
    if not sys.stderr.isatty():
        # Model-loading bars redrawn into a log file are noise; on a terminal they stay.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with NativeLogFilter():
        try:
            return int(args.func(args) or 0)
        except DndError as exc:
            print(f"dnd: error: {exc}", file=sys.stderr)
            if not getattr(exc, "abandons_work", False):
                return 2
        except KeyboardInterrupt:
            print("dnd: interrupted", file=sys.stderr)
            return 130
    # A stalled stage: its executor thread would outlive Ray's shutdown at exit and print tracebacks
    # under the message. The filter has passed the message on (leaving the block drained it) and the
    # run has nothing left to write, so the process ends here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
