"""The report of a run scored by `dnd score`: each card carries its label's and candidates' NeuronEval
metrics, the layer view sorts and filters by them and plots their distribution; a run not scored,
or made before the faithfulness column existed, builds as before and shows none of it.

Runs are written by hand (a neurons/ part and _SUCCESS, no images), so no Ray and no models run.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dnd.faithfulness.metrics import METRICS
from dnd.records import Candidate, NeuronRow, faithfulness_fields, neurons_schema, neurons_table
from dnd.report.build import build_report
from dnd.report.data import (
    FAITHFULNESS_NAMES, FAITHFULNESS_RANGES, HISTOGRAM_BINS, histogram, layer_faithfulness, neuron_record,
)
from dnd.results import Results
from tests.support.chromium import Chromium, find_chromium

SUMMARY = {"concepts": "planted", "metrics": list(METRICS), "alpha": 0.05, "per_layer": {}}


def scores(correlation, cosine, auprc, f1, iou):
    return {"correlation": correlation, "cosine": cosine, "auprc": auprc, "f1": f1, "iou": iou}


def scored_rows():
    """Three neurons of layer4: two scored labels (one with undefined metrics), one unlabelled and
    so unscored; candidate scores on neuron 0 only."""
    return [
        NeuronRow("layer4", 0, label="red circle", labels=["red circle"],
                  candidates=[Candidate("red circle", 0.5, faithfulness=scores(0.5, 0.25, 0.48, 0.4, 0.25)),
                              Candidate("circle", 0.25, faithfulness=scores(-0.25, None, None, None, None))],
                  faithfulness={"concepts": "planted", **scores(0.5, 0.25, 0.48, 0.4, 0.25)}),
        # NaN is how a metric undefined for this pair could arrive; the report shows it as null.
        NeuronRow("layer4", 1, label="blue square", labels=["blue square"], candidates=[Candidate("blue square", 0.75)],
                  faithfulness={"concepts": "planted", **scores(-0.25, float("nan"), 0.9, None, 0.05)}),
        NeuronRow("layer4", 2, label=None, status="failed", error="no captions"),
    ]


def write_run(folder, table, manifest):
    (folder / "neurons").mkdir(parents=True)
    pq.write_table(table, folder / "neurons" / "part-00000.parquet")
    (folder / "_SUCCESS").write_text(json.dumps({"layers": [{"name": "layer4"}], "config": {}, **manifest}))
    return str(folder)


def older_table(rows):
    """The table a run made before `dnd score` existed wrote: no faithfulness column, and no
    faithfulness in its candidates' struct."""
    schema = neurons_schema()
    candidate = schema.field("candidates").type.value_type
    old_candidate = pa.struct([f for f in candidate if f.name != "faithfulness"])
    fields = [pa.field("candidates", pa.list_(old_candidate)) if f.name == "candidates" else f
              for f in schema if f.name != "faithfulness"]
    records = neurons_table(rows).to_pylist()
    for record in records:
        record.pop("faithfulness")
        for cand in record["candidates"]:
            cand.pop("faithfulness")
    return pa.Table.from_pylist(records, schema=pa.schema(fields))


@pytest.fixture
def scored_run(tmp_path):
    return write_run(tmp_path / "scored", neurons_table(scored_rows()), {"faithfulness": SUMMARY})


@pytest.fixture
def older_run(tmp_path):
    return write_run(tmp_path / "older", older_table(scored_rows()), {})


def built(run, out):
    """The built report's index.html text, its index (data/index.js) and its layer-0 records."""
    index = build_report(run, str(out))
    text = (out / "data" / "index.js").read_text()
    meta = json.loads(text.removeprefix("window.DND_INDEX=").rstrip().removesuffix(";"))
    text = (out / "data" / "layer-0.js").read_text()
    number, records = json.loads("[" + text.removeprefix("DND_LAYER(").rstrip().removesuffix(");") + "]")
    assert number == 0
    return (out / "index.html").read_text(), meta, records, index


# -- the data layer ------------------------------------------------------------------------------

def test_the_page_names_and_ranges_every_metric_the_schema_stores():
    assert tuple(f.name for f in faithfulness_fields()) == METRICS
    assert set(FAITHFULNESS_NAMES) == set(FAITHFULNESS_RANGES) == set(METRICS)


def test_records_carry_the_label_and_candidate_scores_as_written(scored_run):
    frame = Results(scored_run).neurons.sort_values("neuron")
    first, second, unlabelled = [neuron_record(row, {}, {}) for row in frame.itertuples()]
    # Values in METRICS order: correlation, cosine, auprc, f1, iou.
    assert first["f"] == [0.5, 0.25, 0.48, 0.4, 0.25] and first["fs"] == "planted"
    assert [c["f"] for c in first["cands"]] == [[0.5, 0.25, 0.48, 0.4, 0.25], [-0.25, None, None, None, None]]
    # NaN and null both come back null; a candidate that was not scored has no scores at all.
    assert second["f"] == [-0.25, None, 0.9, None, 0.05]
    assert "f" not in second["cands"][0]
    assert "f" not in unlabelled and "fs" not in unlabelled


def test_records_of_a_run_without_the_faithfulness_column_have_no_scores(older_run):
    frame = Results(older_run).neurons
    assert "faithfulness" not in frame.columns
    records = [neuron_record(row, {}, {}) for row in frame.itertuples()]
    assert [r["label"] for r in sorted(records, key=lambda r: r["n"])] == ["red circle", "blue square", None]
    assert all("f" not in r and all("f" not in c for c in r["cands"]) for r in records)


def test_histogram_bins_over_the_metric_range():
    # 20 bins on [-1, 1] are 0.1 wide: -0.25 falls in bin 7, 0.5 in bin 15, the top edge 1.0 in the last.
    counts = histogram([-0.25, 0.5, 1.0, -1.0], -1.0, 1.0)
    assert len(counts) == HISTOGRAM_BINS == 20
    assert {i: c for i, c in enumerate(counts) if c} == {0: 1, 7: 1, 15: 1, 19: 1}


def test_a_layers_distribution_counts_only_defined_label_scores():
    records = [{"n": 0, "f": [0.5, 0.25, 0.48, 0.4, 0.25], "cands": []},
               {"n": 1, "f": [-0.25, None, 0.9, None, 0.05], "cands": []},
               {"n": 2, "cands": []}]
    layer = layer_faithfulness(records, list(METRICS))
    assert layer["scored"] == 2
    correlation = layer["metrics"]["correlation"]
    assert (correlation["low"], correlation["high"], correlation["defined"]) == (-1.0, 1.0, 2)
    assert correlation["median"] == pytest.approx(0.125)  # (0.5 - 0.25) / 2
    assert {i: c for i, c in enumerate(correlation["counts"]) if c} == {7: 1, 15: 1}
    auprc = layer["metrics"]["auprc"]
    assert auprc["defined"] == 2 and auprc["median"] == pytest.approx(0.69)
    assert {i: c for i, c in enumerate(auprc["counts"]) if c} == {9: 1, 18: 1}  # bins 0.05 wide on [0, 1]
    f1 = layer["metrics"]["f1"]
    assert f1["defined"] == 1 and f1["median"] == 0.4 and sum(f1["counts"]) == 1
    assert layer_faithfulness([{"n": 2, "cands": []}], list(METRICS)) is None


# -- the built report ----------------------------------------------------------------------------

def test_a_scored_run_gets_controls_histograms_and_scores(scored_run, tmp_path):
    html, meta, records, _ = built(scored_run, tmp_path / "report")
    for control in ('id="sort"', 'id="min-metric"', 'id="min-score"', 'id="faithfulness"', 'id="score-controls"'):
        assert control in html
    assert '<option value="auprc">AUPRC</option>' in html
    faithfulness = meta["faithfulness"]
    assert faithfulness["order"] == list(METRICS) and faithfulness["metrics"] == list(METRICS)
    assert faithfulness["concepts"] == "planted" and faithfulness["alpha"] == 0.05
    layer = meta["layers"][0]["faithfulness"]
    assert layer["scored"] == 2 and layer["metrics"]["iou"]["defined"] == 2
    assert [r.get("f") for r in records] == [[0.5, 0.25, 0.48, 0.4, 0.25], [-0.25, None, 0.9, None, 0.05], None]


def test_only_the_metrics_the_summary_lists_are_offered(tmp_path):
    summary = dict(SUMMARY, metrics=["auprc", "correlation"])
    run = write_run(tmp_path / "run", neurons_table(scored_rows()), {"faithfulness": summary})
    html, meta, _, _ = built(run, tmp_path / "report")
    # In the metrics' own order, whatever order the summary lists them in.
    assert meta["faithfulness"]["metrics"] == ["correlation", "auprc"]
    assert set(meta["layers"][0]["faithfulness"]["metrics"]) == {"correlation", "auprc"}
    assert '<option value="iou">' not in html and '<option value="auprc">' in html


@pytest.mark.parametrize("kind", ["older", "unscored"])
def test_a_run_without_scores_shows_nothing_of_faithfulness(kind, tmp_path):
    rows = scored_rows()
    if kind == "older":
        table = older_table(rows)
    else:  # the column exists, every struct in it is null: the run was never scored
        for row in rows:
            row.faithfulness = None
            for cand in row.candidates:
                cand.faithfulness = None
        table = neurons_table(rows)
    run = write_run(tmp_path / kind, table, {})
    html, meta, records, index = built(run, tmp_path / "report")
    assert index == str(tmp_path / "report" / "index.html")
    assert meta["faithfulness"] is None and "faithfulness" not in meta["layers"][0]
    for control in ('id="sort"', 'id="min-score"', 'id="faithfulness"', 'id="score-controls"'):
        assert control not in html
    assert [r["n"] for r in records] == [0, 1, 2] and all("f" not in r for r in records)


# -- the page in a browser -----------------------------------------------------------------------

def set_value(browser, element, value, event):
    browser.evaluate(f"(() => {{const e = document.getElementById({json.dumps(element)}); e.value = {json.dumps(value)};"
                     f"e.dispatchEvent(new Event({json.dumps(event)})); }})()")


def shown(browser):
    return browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => Number(c.dataset.neuron))")


def test_the_page_sorts_filters_and_plots_by_faithfulness_in_headless_chromium(scored_run, older_run, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on PATH: install Debian's chromium package (apt-get install chromium), as the README says")
    scored = build_report(scored_run, str(tmp_path / "scored-report"))
    older = build_report(older_run, str(tmp_path / "older-report"))
    with Chromium(binary) as browser:
        browser.open(scored)
        assert browser.wait_for("document.querySelectorAll('.card').length") == 3
        assert shown(browser) == [0, 1, 2]  # neuron index, the default
        line = browser.evaluate("document.querySelector('.card .faith').textContent")
        assert line == "faithfulness: corr 0.500 \u00b7 cos 0.250 \u00b7 AUPRC 0.480 \u00b7 F1 0.400 \u00b7 IoU 0.250 (planted)"
        # The candidate table has a column per metric; an unscored candidate shows dashes.
        assert browser.evaluate("Array.from(document.querySelectorAll('.card')[0].querySelectorAll('tr')[2]"
                                ".querySelectorAll('.faith-cell')).map(c => c.textContent)") == ["-0.250", "-", "-", "-", "-"]
        # One histogram per metric, its bars as many as the labels with a defined value.
        assert browser.evaluate("document.querySelectorAll('#faithfulness .hist').length") == len(METRICS)
        assert browser.evaluate("Array.from(document.querySelectorAll('#faithfulness .hist[data-metric=correlation] .bar'))"
                                ".filter(b => Number(b.getAttribute('height')) > 0).length") == 2
        # Sort by AUPRC, highest first; the unscored neuron comes last.
        set_value(browser, "sort", "auprc", "change")
        assert shown(browser) == [1, 0, 2]
        # Keep labels with correlation at least 0: neuron 1 (-0.25) and the unscored 2 go.
        set_value(browser, "min-metric", "correlation", "change")
        set_value(browser, "min-score", "0", "input")
        assert shown(browser) == [0]
        assert browser.evaluate("document.getElementById('shown-count').textContent") == "1 of 3 neurons"
        # The text search still narrows what the score filter keeps.
        set_value(browser, "search", "blue", "input")
        assert shown(browser) == []
        set_value(browser, "search", "", "input")
        set_value(browser, "min-score", "", "input")
        assert shown(browser) == [1, 0, 2]
        # Clicking a bin of a histogram keeps the labels at or above its lower edge (IoU 0.25 to 0.30).
        browser.evaluate("document.querySelectorAll('#faithfulness .hist[data-metric=iou] .hit')[5]"
                         ".dispatchEvent(new MouseEvent('click'))")
        assert shown(browser) == [0]
        assert browser.evaluate("document.getElementById('min-score').value") == "0.25"
        assert browser.evaluate("document.querySelectorAll('#faithfulness .hist[data-metric=iou] .bar.below').length") == 5
        set_value(browser, "sort", "", "change")
        set_value(browser, "min-score", "", "input")
        assert shown(browser) == [0, 1, 2]
        browser.pump(0.3)
        assert browser.errors == []

        browser.open(older)
        assert browser.wait_for("document.querySelectorAll('.card').length") == 3
        assert browser.evaluate("document.querySelectorAll('.faith, .faith-cell, .hist, #score-controls').length") == 0
        set_value(browser, "search", "red", "input")
        assert shown(browser) == [0]
        browser.pump(0.3)
        assert browser.errors == []
