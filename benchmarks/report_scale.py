"""How the HTML report scales: a run of N neurons (default 2,000) made by repeating the rows of an
existing run under new neuron numbers, reported and opened in headless Chromium.

    python benchmarks/report_scale.py RUN_URI [--neurons 2000]

Prints one JSON line: build seconds (first build, then a rebuild reusing thumbnails), data sizes,
and the seconds from navigation until the first cards are shown and their images decoded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def scaled_run(source: str, neurons: int, folder: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dnd.records import neurons_schema
    from dnd.results import Results

    results = Results(source)
    frame = results.neurons
    rows = frame.to_dict("records")
    copies = [dict(rows[i % len(rows)], layer="layer4", neuron=i) for i in range(neurons)]
    run = folder / "run"
    (run / "neurons").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(copies, schema=neurons_schema()), run / "neurons" / "part-00000.parquet")
    shutil.copytree(Path(source) / "images", run / "images")
    if (Path(source) / "cache" / "generated").exists():
        shutil.copytree(Path(source) / "cache" / "generated", run / "cache" / "generated")
    manifest = dict(results.manifest, layers=[{"name": "layer4"}])
    (run / "_SUCCESS").write_text(json.dumps(manifest, default=str))
    return str(run)


def measure(run: str, out: Path) -> dict:
    """Build ``run``'s report into ``out`` twice (first build, then a rebuild reusing thumbnails) and
    open it in headless Chromium when one is installed: the figures of this benchmark's JSON line.
    benchmarks/scale.py measures a real run with it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.chromium import Chromium, find_chromium

    from dnd.report.build import build_report

    started = time.perf_counter()
    index = build_report(run, str(out))
    first_build = time.perf_counter() - started
    started = time.perf_counter()
    build_report(run, str(out))
    rebuild = time.perf_counter() - started
    data = out / "data"
    result = {
        "build_s": round(first_build, 2), "rebuild_s": round(rebuild, 2),
        "index_js_bytes": (data / "index.js").stat().st_size, "layer_js_bytes": (data / "layer-0.js").stat().st_size,
    }
    binary = find_chromium()
    if binary:
        with Chromium(binary) as browser:
            started = time.perf_counter()
            browser.open(index)
            browser.wait_for("document.querySelectorAll('.card').length > 0 && Array.from(document.querySelector('.card')"
                             ".querySelectorAll('img')).every(i => i.complete && i.naturalWidth > 0)")
            result["open_to_first_cards_s"] = round(time.perf_counter() - started, 2)
            result["cards_in_dom"] = browser.evaluate("document.querySelectorAll('.card').length")
            started = time.perf_counter()
            browser.evaluate("(() => {const s = document.getElementById('search'); s.value = 'x';"
                             "s.dispatchEvent(new Event('input')); })()")
            result["search_s"] = round(time.perf_counter() - started, 3)
            result["console_errors"] = len(browser.errors)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--neurons", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = scaled_run(args.run, args.neurons, Path(tmp))
        print(json.dumps({"neurons": args.neurons, **measure(run, Path(tmp) / "report")}))


if __name__ == "__main__":
    main()
