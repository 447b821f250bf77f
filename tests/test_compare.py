"""Comparing models (``lightning-brats compare``) and the evaluation folder's ``report.html``.

Evaluation folders are written with the project's own writer (``write_csv``, ``summarize``) from
per-case values chosen so that the BraTS ranks, the Wilcoxon signed-rank p-values and the mean
differences can be worked out by hand; they are written out in the tests. ``report.html`` is opened
in headless Chromium (Debian's ``chromium``), whose rendered DOM must hold every case's row and
picture.
"""

from __future__ import annotations

import base64
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_brats.data.readers import DataError
from lightning_brats.evaluation.comparison import ComparisonError, compare, direction, read_eval_folder
from lightning_brats.evaluation.report import write_report
from lightning_brats.evaluation.scoring import METRICS, STATISTICS, read_csv, summarize
from lightning_brats.io import write_csv

REPO = Path(__file__).resolve().parents[1]
REGIONS = ["wt", "et"]


def write_eval_folder(folder: Path, values: dict[str, dict[str, float]], extra: dict | None = None) -> Path:
    """An eval.py-like folder: ``values[case][column]`` for the given columns; every other metric of
    :data:`METRICS` is 0.5 in every case (equal for all models, so it cannot change a rank)."""
    rows = []
    for case, columns in values.items():
        row = {"case_id": case, "missing": False}
        row.update({f"{m}_{r}": 0.5 for m in METRICS for r in REGIONS})
        row.update({k: float(v) for k, v in columns.items()})
        row.update((extra or {}).get(case, {}))
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "metrics.csv", rows, list(rows[0]))
    write_csv(folder / "summary.csv", summarize(rows, REGIONS), ["metric", "region", "cases", *STATISTICS])
    return folder


def _columns(dice_wt, hd95_wt, dice_et, hd95_et, **more) -> dict:
    return {"dice_wt": dice_wt, "hd95_wt": hd95_wt, "dice_et": dice_et, "hd95_et": hd95_et, **more}


# Three models, three cases; sensitivity favours A everywhere but is not a ranked metric.
# Ranks per case, worked out by hand (1 = best, ties share the mean rank, NaN last):
#   c1: dice_wt A.9 B.8 C.7 -> 1,2,3; hd95_wt A2 B2 C5 -> 1.5,1.5,3; dice_et A.5 B.6 C.6 -> 3,1.5,1.5;
#       hd95_et A10 B3 C4 -> 3,1,2;  cumulative A 8.5/4 = 2.125, B 6/4 = 1.5, C 9.5/4 = 2.375
#   c2: all equal -> every rank 2;   cumulative 2, 2, 2
#   c3: dice_wt A.6 B.7 C.9 -> 3,2,1; hd95_wt A9 B8 C1 -> 3,2,1; dice_et A.2 B.1 C.3 -> 2,3,1;
#       hd95_et A NaN B20 C10 -> 3,2,1; cumulative A 11/4 = 2.75, B 9/4 = 2.25, C 1
#   final score: A 6.875/3, B 5.75/3, C 5.375/3 -> places C 1, B 2, A 3
MODELS = {
    "A": {"c1": _columns(0.9, 2, 0.5, 10, sensitivity_wt=0.99), "c2": _columns(0.8, 4, 1.0, 0, sensitivity_wt=0.99),
          "c3": _columns(0.6, 9, 0.2, math.nan, sensitivity_wt=0.99)},
    "B": {"c1": _columns(0.8, 2, 0.6, 3, sensitivity_wt=0.1), "c2": _columns(0.8, 4, 1.0, 0, sensitivity_wt=0.1),
          "c3": _columns(0.7, 8, 0.1, 20, sensitivity_wt=0.1)},
    "C": {"c1": _columns(0.7, 5, 0.6, 4, sensitivity_wt=0.2), "c2": _columns(0.8, 4, 1.0, 0, sensitivity_wt=0.2),
          "c3": _columns(0.9, 1, 0.3, 10, sensitivity_wt=0.2)},
}


@pytest.fixture
def three_models(tmp_path) -> list[Path]:
    return [write_eval_folder(tmp_path / name, values) for name, values in MODELS.items()]


def test_brats_ranking_matches_the_hand_computed_ranks(three_models):
    result = compare(three_models, seed=0, n_resamples=2000)
    assert [m.name for m in result.models] == ["A", "B", "C"]
    assert result.cases == ["c1", "c2", "c3"]
    # legacy data: Dice and HD95 are ranked, sensitivity is not
    assert result.ranked == [("dice", "wt"), ("dice", "et"), ("hd95", "wt"), ("hd95", "et")]
    k = {c: i for i, c in enumerate(result.ranked)}
    assert result.ranks[k[("hd95", "wt")], :, 0].tolist() == [1.5, 1.5, 3.0]
    assert result.ranks[k[("dice", "et")], :, 0].tolist() == [3.0, 1.5, 1.5]
    assert result.ranks[k[("hd95", "et")], :, 2].tolist() == [3.0, 2.0, 1.0]  # A's NaN ranks last
    assert np.all(result.ranks[:, :, 1] == 2.0)
    np.testing.assert_allclose(result.case_rank, [[2.125, 2, 2.75], [1.5, 2, 2.25], [2.375, 2, 1]])
    np.testing.assert_allclose(result.score, [6.875 / 3, 5.75 / 3, 5.375 / 3])
    assert result.place.tolist() == [3, 2, 1]
    # per ranked column, the mean rank over cases: hd95 ET A (3+2+3)/3, B (1+2+2)/3, C (2+2+1)/3
    np.testing.assert_allclose(result.ranks[k[("hd95", "et")]].mean(axis=1), [8 / 3, 5 / 3, 5 / 3])


def test_a_uniformly_better_model_ranks_first_on_every_case_and_identical_models_share(tmp_path):
    base = {f"c{i}": _columns(0.5 + 0.05 * i, 10 - i, 0.4 + 0.05 * i, 12 - i) for i in range(5)}
    better = {c: _columns(v["dice_wt"] + 0.1, v["hd95_wt"] - 1, v["dice_et"] + 0.1, v["hd95_et"] - 1) for c, v in base.items()}
    folders = [write_eval_folder(tmp_path / "base", base), write_eval_folder(tmp_path / "better", better),
               write_eval_folder(tmp_path / "base_again", base)]
    result = compare(folders, n_resamples=1000)
    assert np.all(result.ranks[:, 1, :] == 1.0)  # the better model, every metric, region and case
    assert np.all(result.ranks[:, [0, 2], :] == 2.5)  # the two identical ones share ranks 2 and 3
    assert result.place.tolist() == [2, 1, 2]
    identical = [p for p in result.paired if (p["model_a"], p["model_b"]) == ("base", "base_again")]
    assert len(identical) == len(result.columns)
    for row in identical:
        assert row["mean_difference"] == 0.0 and row["p_value"] == 1.0
        assert row["ci_low"] <= 0.0 <= row["ci_high"] and row["better"] == ""


def test_paired_differences_follow_the_exact_wilcoxon_distribution(tmp_path):
    # B - A per case: dice_wt +0.01..+0.05 (all positive, distinct): W- = 0; of the 2^5 = 32 equally
    # likely sign patterns only "all +" and "all -" are as extreme -> two-sided p = 2/32.
    # dice_et -0.01, +0.02..+0.05: W- = 1 (the smallest rank); P(W- <= 1) = 2/32 ({}, {1}),
    # two-sided 4/32. hd95_wt: B is 1..5 mm worse (lower is better -> A better). A sixth case has
    # NaN for B's dice_et and is left out of that column only.
    a = {f"c{i}": _columns(0.5, 10, 0.5, 10) for i in range(1, 6)}
    b = {f"c{i}": _columns(0.5 + 0.01 * i, 10 + i, 0.5 + (0.01 * i if i > 1 else -0.01), 10) for i in range(1, 6)}
    a["c6"], b["c6"] = _columns(0.5, 10, 0.5, 10), _columns(0.5, 10, math.nan, 10)
    result = compare([write_eval_folder(tmp_path / "A", a), write_eval_folder(tmp_path / "B", b)], n_resamples=4000)
    rows = {(p["metric"], p["region"]): p for p in result.paired}

    dice_wt = rows[("dice", "wt")]
    assert dice_wt["cases"] == 6  # c6's difference is 0 (dropped by the test, kept in the mean)
    assert dice_wt["mean_difference"] == pytest.approx((0.01 + 0.02 + 0.03 + 0.04 + 0.05) / 6, abs=1e-6)
    assert dice_wt["p_value"] == pytest.approx(2 / 32) and dice_wt["wilcoxon_statistic"] == 0
    assert dice_wt["better"] == "B" and 0 < dice_wt["ci_low"] < dice_wt["mean_difference"] < dice_wt["ci_high"] <= 0.05

    dice_et = rows[("dice", "et")]
    assert dice_et["cases"] == 5  # the NaN pair is left out
    assert dice_et["mean_difference"] == pytest.approx((-0.01 + 0.02 + 0.03 + 0.04 + 0.05) / 5, abs=1e-6)
    assert dice_et["p_value"] == pytest.approx(4 / 32) and dice_et["wilcoxon_statistic"] == 1
    # the bootstrap interval of a mean cannot leave the range of the differences
    assert -0.01 <= dice_et["ci_low"] < dice_et["mean_difference"] < dice_et["ci_high"] <= 0.05

    hd95_wt = rows[("hd95", "wt")]
    assert hd95_wt["mean_difference"] == pytest.approx(15 / 6) and hd95_wt["better"] == "A"
    assert hd95_wt["p_value"] == pytest.approx(2 / 32)
    # a metric without a better direction: no winner named
    volume = rows[("volume_pred_ml", "wt")]
    assert volume["better"] == "" and volume["p_value"] == 1.0
    # seeded: the same interval again
    again = compare([tmp_path / "A", tmp_path / "B"], n_resamples=4000)
    assert [(p["ci_low"], p["ci_high"]) for p in again.paired] == [(p["ci_low"], p["ci_high"]) for p in result.paired]


def test_different_cases_are_an_error_that_lists_them(tmp_path):
    first = write_eval_folder(tmp_path / "one", {c: _columns(0.5, 1, 0.5, 1) for c in ("c1", "c2", "c3")})
    second = write_eval_folder(tmp_path / "two", {c: _columns(0.5, 1, 0.5, 1) for c in ("c1", "c2", "c4")})
    with pytest.raises(ComparisonError, match=r"two lacks \['c3'\] and has in addition \['c4'\]"):
        compare([first, second])
    with pytest.raises(ComparisonError, match="two or more"):
        compare([first])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/metrics.csv: no such file"):
        compare([first, tmp_path / "empty"])
    with pytest.raises(ComparisonError, match=r"rank=\['volume_pred_ml'\]: no better direction"):
        compare([first, first], rank=["volume_pred_ml"])


def test_lesionwise_columns_are_compared_and_ranked_when_present(tmp_path):
    # lesion-wise columns as another part of issue 14 adds them; the leaderboards since 2023 rank by them
    extra = {
        "A": {"c1": {"lesionwise_dice_wt": 0.9, "lesionwise_hd95_wt": 3.0, "lesionwise_fp_wt": 0.0},
              "c2": {"lesionwise_dice_wt": 0.8, "lesionwise_hd95_wt": 5.0, "lesionwise_fp_wt": 1.0}},
        "B": {"c1": {"lesionwise_dice_wt": 0.7, "lesionwise_hd95_wt": 9.0, "lesionwise_fp_wt": 2.0},
              "c2": {"lesionwise_dice_wt": 0.6, "lesionwise_hd95_wt": 374.0, "lesionwise_fp_wt": 3.0}},
    }
    folders = []
    for name, columns in extra.items():
        # the legacy Dice says B is better; the lesion-wise columns say A
        legacy = {c: _columns(0.5 if name == "A" else 0.9, 1, 0.5, 1) for c in ("c1", "c2")}
        folders.append(write_eval_folder(tmp_path / name, legacy, extra=columns))
    result = compare(folders, n_resamples=500)
    assert result.ranked == [("lesionwise_dice", "wt"), ("lesionwise_hd95", "wt")]
    assert result.place.tolist() == [1, 2] and result.score.tolist() == [1.0, 2.0]
    fp = next(p for p in result.paired if p["metric"] == "lesionwise_fp")
    assert fp["mean_difference"] == pytest.approx(2.0) and fp["better"] == "A"  # fewer false positives
    legacy = compare(folders, rank=["dice"], n_resamples=500)
    assert legacy.place.tolist() == [2, 1]
    assert (direction("lesionwise_hd95"), direction("lesionwise_dice"), direction("volume_true_ml")) == (-1, 1, 0)


def test_read_csv_reads_back_what_write_csv_wrote(tmp_path):
    rows = [{"case_id": "001", "missing": True, "dice_wt": 0.25, "hd95_wt": math.nan},
            {"case_id": "002", "missing": False, "dice_wt": 1.0, "hd95_wt": 373.13}]
    write_csv(tmp_path / "metrics.csv", rows, list(rows[0]))
    back = read_csv(tmp_path / "metrics.csv")
    assert back[0]["case_id"] == "001" and back[0]["missing"] is True and back[1]["missing"] is False
    assert back[0]["dice_wt"] == 0.25 and math.isnan(back[0]["hd95_wt"]) and back[1]["hd95_wt"] == 373.13
    (tmp_path / "bad.csv").write_text("case_id,dice_wt\nc1,0.5,0.7\n")
    with pytest.raises(DataError, match=r"bad.csv, line 2: 3 cells for 2 columns"):
        read_csv(tmp_path / "bad.csv")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_brats.cli", "compare", *args], cwd=REPO, check=False,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a Python process of its own (main() is tested in-process below)
def test_cli_writes_the_tables_and_the_picture(three_models, tmp_path):
    out = tmp_path / "out"
    done = _run_cli(*map(str, three_models), f"out={out}", "resamples=500")
    assert done.returncode == 0, done.stderr
    assert "BraTS ranking" in done.stdout and "Wilcoxon" in done.stdout
    ranking = read_csv(out / "ranking.csv")
    assert [(r["model"], r["place"]) for r in ranking] == [("C", 1.0), ("B", 2.0), ("A", 3.0)]
    assert ranking[0]["score"] == pytest.approx(5.375 / 3, abs=1e-5)
    paired = read_csv(out / "paired.csv")
    assert len(paired) == 3 * len(METRICS) * len(REGIONS)  # 3 pairs x every metric and region
    case_ranks = read_csv(out / "case_ranks.csv")
    assert [r["cumulative_rank"] for r in case_ranks if r["case_id"] == "c1"] == [2.125, 1.5, 2.375]
    with Image.open(out / "differences.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600


def test_cli_default_folder_and_errors(three_models, tmp_path, monkeypatch, capsys):
    from lightning_brats.cli.compare import main

    # no out=: a new folder under $LIGHTNING_BRATS_ROOT/logs/compare, twice in the same second
    monkeypatch.setenv("LIGHTNING_BRATS_ROOT", str(tmp_path / "root"))
    for _ in range(2):
        main([*map(str, three_models[:2]), "resamples=200"])
    made = sorted((tmp_path / "root" / "logs" / "compare").iterdir())
    assert len(made) == 2 and all((m / "ranking.csv").is_file() and (m / "differences.png").is_file() for m in made)
    # different cases: exit status 1, the cases named, nothing written
    other = write_eval_folder(tmp_path / "other", {"c1": _columns(0.5, 1, 0.5, 1)})
    with pytest.raises(SystemExit) as exit_:
        main([str(three_models[0]), str(other), f"out={tmp_path / 'bad'}"])
    assert exit_.value.code == 1 and "lacks ['c2', 'c3']" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exit_:
        main([str(three_models[0]), str(three_models[1]), "outt=x"])
    assert exit_.value.code == 1 and "unknown option 'outt=x'" in capsys.readouterr().err


# ---- report.html in headless Chromium -------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_dom(page: Path, profile: Path, fragment: str = "") -> str:
    """The DOM after the page loaded (its scripts ran), from headless Chromium; fails if Chromium is missing."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed; report.html is tested in it: apt-get install -y chromium "
                    "(.ci/run installs it)", pytrace=False)
    profile.mkdir(parents=True, exist_ok=False)
    done = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                           page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


class _Dom(HTMLParser):
    """Case rows (``<tr data-case>``), their ``<img>`` sources and the ``<body>`` attributes of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.cases: list[str] = []
        self.images: dict[str, list[str]] = {}
        self.other_images: list[str] = []
        self.body: dict = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "tr" and "data-case" in attrs:
            self.cases.append(attrs["data-case"])
            self.images[attrs["data-case"]] = []
        elif tag == "img":
            (self.images[self.cases[-1]] if "case" in attrs.get("class", "").split() else self.other_images).append(attrs["src"])


def _decoded(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return base64.b64decode(src[len(prefix):])


@pytest.mark.slow  # starts a headless browser
def test_report_shows_every_case_row_and_picture_in_chromium(tmp_path):
    dice = {"case_b": 0.7, "case&a": 0.9, "case_c": 0.1, "case_d": 0.4}
    folder = write_eval_folder(tmp_path / "eval", {c: _columns(d, 5, d, 5) for c, d in dice.items()})
    (folder / "pictures").mkdir()
    for i, case in enumerate(dice):  # a different picture per case
        Image.new("RGB", (40 + 10 * i, 30), (60 * i, 100, 200)).save(folder / "pictures" / f"{case}.png")
    Image.new("RGB", (50, 50), (0, 0, 0)).save(folder / "dice_boxplot.png")
    page = write_report(folder)
    assert page == folder / "report.html"

    dom = _Dom(chromium_dom(page, tmp_path / "profile1"))
    assert dom.cases == list(dice)  # metrics.csv order
    for case in dice:
        (src,) = dom.images[case]
        assert _decoded(src) == (folder / "pictures" / f"{case}.png").read_bytes()
    assert len(dom.other_images) == 1 and _decoded(dom.other_images[0]) == (folder / "dice_boxplot.png").read_bytes()
    assert dom.body.get("data-images-shown") == str(len(dice) + 1)  # every picture decoded and shown
    # sorted as a link asks (the same code a header click runs): Dice WT descending
    dom = _Dom(chromium_dom(page, tmp_path / "profile2", "#sort=-dice_wt"))
    assert dom.cases == sorted(dice, key=dice.get, reverse=True)
    dom = _Dom(chromium_dom(page, tmp_path / "profile3", "#sort=dice_wt"))
    assert dom.cases == sorted(dice, key=dice.get)


@pytest.mark.slow
@pytest.mark.real_data
def test_eval_writes_a_report_and_two_real_evaluations_compare(brats2018_root, tmp_path):
    import nibabel as nib
    from scipy import ndimage

    from lightning_brats.cli.eval import evaluate
    from tests.conftest import compose_tool_config

    cases = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1"]
    gt = tmp_path / "gt"
    gt.mkdir()
    for case in cases:
        (gt / case).symlink_to(brats2018_root / case)
        seg = nib.load(gt / case / f"{case}_seg.nii.gz")
        label = np.asarray(seg.dataobj).astype(np.uint8)
        eroded = np.where(ndimage.binary_erosion(label > 0, iterations=2), label, 0).astype(np.uint8)
        for name, data in (("same", label), ("eroded", eroded)):
            (tmp_path / name).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, seg.affine, seg.header), tmp_path / name / f"{case}.nii.gz")
    for name, pictures in (("same", "true"), ("eroded", "false")):
        cfg = compose_tool_config("eval", [f"ground_truth={gt}", f"predictions={tmp_path / name}", "data=brats20",
                                           "logger=csv", f"pictures={pictures}"], tmp_path / f"eval_{name}")
        evaluate(cfg)

    dom = _Dom(chromium_dom(tmp_path / "eval_same" / "report.html", tmp_path / "profile"))
    assert dom.cases == cases
    for case in cases:
        (src,) = dom.images[case]
        assert _decoded(src) == (tmp_path / "eval_same" / "pictures" / f"{case}.png").read_bytes()
    assert dom.body.get("data-images-shown") == str(len(cases) + 1)
    text = (tmp_path / "eval_eroded" / "report.html").read_text()  # pictures=false: rows without pictures
    assert _Dom(text).cases == cases and text.count("no picture") == len(cases)

    result = compare([tmp_path / "eval_same", tmp_path / "eval_eroded"], n_resamples=500)
    assert read_eval_folder(tmp_path / "eval_same").regions == ["wt", "tc", "et"]
    assert result.place.tolist() == [1, 2] and np.all(result.ranks[:, 0, :] == 1.0)
    dice = {p["region"]: p for p in result.paired if p["metric"] == "dice"}
    assert all(p["mean_difference"] < 0 and p["better"] == "eval_same" for p in dice.values())
