"""The report of a `dnd compare` folder: one card per neuron with the shared top images, a switcher
between the methods' labels, candidates and faithfulness, a page-wide method control, and a header
line per method.

Three runs of one layer are written by hand as test_report_faithfulness.py writes one (a neurons/
part and _SUCCESS; no images, no Ray, no models), with the same neurons and top images and their
own labels, candidates, captions and scores; clip-dissect's run lacks neuron 2.
"""

import json

import pytest

from dnd.records import Candidate, Caption, NeuronRow, TopImage, neurons_table
from dnd.report.build import build_report
from dnd.results import Results
from tests.support.chromium import Chromium, find_chromium
from tests.unit.test_report_faithfulness import SUMMARY, built, scores, set_value, shown, write_run

METHODS = ["paper", "dnd", "clip-dissect"]

#: Labels by method and neuron; clip-dissect has no row for neuron 2, paper's neuron 2 failed.
LABELS = {"paper": ["red circle", "blue square", None], "dnd": ["red disc", "navy square", "green triangle"],
          "clip-dissect": ["circle", "square"]}

#: Each method's label correlation by neuron, so sorting shows which method the page reads.
CORRELATION = {"paper": [0.5, -0.25, None], "dnd": [0.2, 0.9, 0.5]}

#: _COMPARE's summary: one full, one with nulls, one null (as `dnd compare` may write them).
COMPARE_SUMMARY = {
    "paper": {"neurons": 3, "ok": 2, "seconds_per_neuron": 0.41,
              "per_layer": {"layer4": {"correlation": 0.61, "auprc": 0.72}}},
    "dnd": {"neurons": 3, "ok": 3, "seconds_per_neuron": None, "per_layer": None},
    "clip-dissect": None,
}


def tops(n):
    """Step 1's top images of neuron ``n``: the same in every method's run."""
    return [TopImage(f"probe-{n}", 2.0, False), TopImage(f"crop-{n}", 1.5, True, f"probe-{n}", [0, 0, 4, 4])]


def method_rows(method):
    """``method``'s rows of layer4: its labels, two candidates each, its captions (clip-dissect
    captions nothing) and, for the scored methods, faithfulness of the label and first candidate."""
    rows = []
    for n, label in enumerate(LABELS[method]):
        if label is None:
            rows.append(NeuronRow("layer4", n, top_images=tops(n), status="failed", error="no captions"))
            continue
        value = CORRELATION.get(method, [None] * 3)[n]
        faithfulness = None if value is None else scores(value, 0.25 * n, 0.25 + 0.25 * n, None, 0.05)
        rows.append(NeuronRow(
            "layer4", n, top_images=tops(n), label=label, labels=[label, f"{method} second {n}"],
            captions=[] if method == "clip-dissect" else [Caption(f"probe-{n}", f"{method} caption {n}")],
            candidates=[Candidate(label, 0.5 + n, faithfulness=faithfulness), Candidate(f"{method} other {n}", 0.25)],
            faithfulness=None if faithfulness is None else {"concepts": "planted", **faithfulness}))
    return rows


@pytest.fixture
def comparison(tmp_path):
    """A compare folder: the three runs (dnd named relative to the folder) and its _COMPARE."""
    root = tmp_path / "compare"
    runs = {}
    for method in METHODS:
        manifest = {"method": {"name": method, "differs": {"seed": 3} if method == "dnd" else {}}}
        if method in CORRELATION:
            manifest["faithfulness"] = SUMMARY
        runs[method] = write_run(root / method, neurons_table(method_rows(method)), manifest)
    runs["dnd"] = "dnd"
    (root / "_COMPARE").write_text(json.dumps({
        "methods": METHODS, "runs": runs, "step1_uri": str(root / "step1"), "cache_uri": str(root / "cache"),
        "concepts": "planted", "summary": COMPARE_SUMMARY}))
    return root


# -- the data ------------------------------------------------------------------------------------

def test_each_methods_part_is_its_runs_row_as_written(comparison, tmp_path):
    _, meta, rows, index = built(str(comparison), tmp_path / "report")
    assert index == str(tmp_path / "report" / "index.html")
    assert meta["compare"]["methods"] == METHODS and [r["n"] for r in rows] == [0, 1, 2]
    for method in METHODS:
        table = Results(str(comparison / method)).neurons.sort_values("neuron")
        for written in table.itertuples():
            part = rows[written.neuron]["m"][method]
            assert part["label"] == (written.label if isinstance(written.label, str) else None)
            assert part["labels"] == list(written.labels) and part["status"] == written.status
            assert [(c["c"], c["s"]) for c in part["cands"]] == [(c["concept"], c["score"]) for c in written.candidates]
            for cand, source in zip(part["cands"], written.candidates):
                assert cand.get("f") == (None if source["faithfulness"] is None else
                                         [source["faithfulness"][m] for m in ("correlation", "cosine", "auprc", "f1", "iou")])
    # Spelled out for neuron 0: each method's own label, candidates and label faithfulness.
    first = rows[0]["m"]
    assert [first[m]["label"] for m in METHODS] == ["red circle", "red disc", "circle"]
    assert [c["c"] for c in first["dnd"]["cands"]] == ["red disc", "dnd other 0"]
    assert first["paper"]["f"] == [0.5, 0.0, 0.25, None, 0.05] and first["dnd"]["f"][0] == 0.2
    assert "f" not in first["clip-dissect"]


def test_images_are_shared_and_captions_belong_to_each_method(comparison, tmp_path):
    _, _, rows, _ = built(str(comparison), tmp_path / "report")
    row = rows[1]
    assert [t["id"] for t in row["tops"]] == ["probe-1", "crop-1"] and row["tops"][1]["p"] == "probe-1"
    assert all("c" not in t for t in row["tops"] + row["crops"])
    assert row["m"]["paper"]["caps"] == {"probe-1": "paper caption 1"}
    assert row["m"]["dnd"]["caps"] == {"probe-1": "dnd caption 1"}
    assert "caps" not in row["m"]["clip-dissect"]
    # Method parts carry no images of their own: the card's images come from the shared row.
    assert all("tops" not in part and "crops" not in part for part in row["m"].values())


def test_a_neuron_missing_from_a_run_reads_no_row(comparison, tmp_path):
    _, meta, rows, _ = built(str(comparison), tmp_path / "report")
    assert rows[2]["m"]["clip-dissect"] == {"label": None, "labels": [], "status": "no row", "error": None, "cands": []}
    assert rows[2]["m"]["paper"]["status"] == "failed" and rows[2]["m"]["dnd"]["label"] == "green triangle"
    layer = meta["layers"][0]
    assert (layer["name"], layer["count"]) == ("layer4", 3)
    assert layer["by"]["clip-dissect"]["status"] == {"ok": 2, "no row": 1}
    assert layer["by"]["paper"]["status"] == {"ok": 2, "failed": 1}
    # Faithfulness per method: clip-dissect was not scored, so its layer has no distribution.
    assert layer["by"]["dnd"]["faithfulness"]["scored"] == 3 and layer["by"]["clip-dissect"]["faithfulness"] is None
    assert meta["faithfulness"]["concepts"] == "planted"


def test_a_run_that_cannot_be_read_shows_no_row_and_says_why(comparison, tmp_path):
    compare = json.loads((comparison / "_COMPARE").read_text())
    compare["runs"]["clip-dissect"] = str(comparison / "never-written")
    (comparison / "_COMPARE").write_text(json.dumps(compare))
    html, meta, rows, _ = built(str(comparison), tmp_path / "report")
    assert [r["m"]["clip-dissect"]["status"] for r in rows] == ["no row"] * 3
    assert "never-written" in meta["compare"]["notes"]["clip-dissect"] and "never-written" in html


def test_the_header_shows_each_methods_summary_and_method_line(comparison, tmp_path):
    html, meta, _, _ = built(str(comparison), tmp_path / "report")
    assert meta["compare"]["lines"] == {"paper": "method: paper (its defaults)",
                                        "dnd": "method: dnd; options that differ from its defaults: seed=3",
                                        "clip-dissect": "method: clip-dissect (its defaults)"}
    assert meta["compare"]["runs"]["dnd"] == str(comparison / "dnd")  # the relative path, resolved
    paper = html.split('<tr data-method="paper">')[1].split("</tr>")[0]
    assert "<td>3</td><td>2</td><td>0.41</td><td>layer4: corr 0.610 \u00b7 AUPRC 0.720</td>" in paper
    assert "method: paper (its defaults)" in paper
    dnd = html.split('<tr data-method="dnd">')[1].split("</tr>")[0]
    assert "<td>3</td><td>3</td><td>-</td><td>-</td>" in dnd and "seed=3" in dnd
    assert html.count('<option value="clip-dissect">') == 1 and 'id="method"' in html


def test_a_single_run_in_the_folder_still_gets_its_own_report(comparison, tmp_path):
    html, meta, rows, _ = built(str(comparison / "paper"), tmp_path / "report")
    assert "compare" not in meta and 'id="method"' not in html and "DND_INDEX.compare" not in html
    assert [r["label"] for r in rows] == LABELS["paper"]


# -- the page in a browser -----------------------------------------------------------------------

def card_labels(browser):
    return browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.querySelector('.label').textContent)")


def test_the_switchers_change_one_card_or_every_card_in_headless_chromium(comparison, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium on PATH: install Debian's chromium package (apt-get install chromium), as the README says")
    index = build_report(str(comparison), str(tmp_path / "report"))
    with Chromium(binary) as browser:
        browser.open(index)
        assert browser.wait_for("document.querySelectorAll('.card').length") == 3
        assert card_labels(browser) == ["red circle", "blue square", "(no label)"]
        # Every method's label is on the card before any click; the missing row says so.
        assert browser.evaluate("Array.from(document.querySelectorAll('.card')[2].querySelectorAll('.switch button'))"
                                ".map(b => b.textContent)") == ["paper: (failed)", "dnd: green triangle", "clip-dissect: (no row)"]
        # One card's switcher changes that card alone, its candidates and captions with it.
        browser.evaluate("document.querySelector('.card[data-neuron=\"0\"] .switch button[data-method=dnd]').click()")
        assert card_labels(browser) == ["red disc", "blue square", "(no label)"]
        assert browser.evaluate("document.querySelector('.card[data-neuron=\"0\"] td').textContent") == "red disc"
        assert browser.evaluate("document.querySelector('.card[data-neuron=\"0\"] .caption').textContent") == "dnd caption 0"
        browser.evaluate("document.querySelector('.card[data-neuron=\"2\"] .switch button[data-method=clip-dissect]').click()")
        assert browser.evaluate("document.querySelector('.card[data-neuron=\"2\"] h2').textContent").endswith("no row")
        # The page-wide control switches every card, and sorting reads that method's scores.
        set_value(browser, "method", "dnd", "change")
        assert card_labels(browser) == ["red disc", "navy square", "green triangle"]
        assert browser.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.method)") == ["dnd"] * 3
        set_value(browser, "sort", "correlation", "change")
        assert shown(browser) == [1, 2, 0]
        set_value(browser, "method", "clip-dissect", "change")
        assert card_labels(browser) == ["circle", "square", "(no label)"]
        assert browser.evaluate("document.getElementById('summary').textContent") == "layer4: 3 neurons; ok 2, no row 1"
        set_value(browser, "search", "squ", "input")
        assert shown(browser) == [1]
        browser.pump(0.3)
        assert browser.errors == []
