"""Choosing the ET threshold and small-component rule on cross-validation predictions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import yaml

from lightning_brats.inference.postprocessing_tuning import (
    TUNED_FILE,
    apply_tuned,
    read_tuned_postprocessing,
    tune_postprocessing,
    write_tuned_postprocessing,
)
from lightning_brats.inference.prediction import PostProcessing, postprocessing_for
from tests.conftest import compose_tool_config, inference_settings

REGIONS = {"wt": [1, 2, 4], "tc": [1, 4], "et": [4]}


def _case(et_probability: float, true_et: bool, island: int) -> tuple[np.ndarray, np.ndarray]:
    """A 40^3 case: oedema shell, tumour core cube, and either a true ET core (10^3 voxels) predicted
    with ``et_probability``, or no ET but an ET island of ``island`` voxels predicted at 0.9."""
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[5:35, 5:35, 5:35] = 2
    truth[10:30, 10:30, 10:30] = 1
    probs = np.zeros((3, 40, 40, 40), np.float32)
    probs[0][truth > 0] = 0.95
    probs[1][np.isin(truth, [1, 4])] = 0.95
    if true_et:
        truth[15:25, 15:25, 15:25] = 4
        probs[2][15:25, 15:25, 15:25] = et_probability
    else:
        probs[2][12:12 + island, 12, 12] = 0.9  # a line of `island` voxels inside the core
    return probs, truth


def test_the_rule_that_fixes_both_failure_modes_is_chosen():
    # case a: the true ET core (1000 voxels) is predicted at 0.45: only thresholds <= 0.45 find it.
    # case b: no ET, an island of 15 voxels at 0.9: only min_voxels > 15 removes it (to NCR, still TC),
    # and min_voxels <= 1000 keeps case a's core. Any such rule scores Dice 1 on every region of both
    # cases; the current one (0.5, 100 voxels) finds no ET in a (ET Dice 0) but removes b's island: 5/6.
    cases = [("a", *_case(0.45, True, 0)), ("b", *_case(0.0, False, 15))]
    result = tune_postprocessing(iter(cases), REGIONS, inference_settings(), PostProcessing("et", 100),
                                 thresholds=[0.4, 0.45, 0.5, 0.6], min_voxels=[0, 10, 25, 100, 1000, 2000])
    assert result.current.threshold == 0.5 and result.current.min_voxels == 100
    assert result.scores[result.current] == pytest.approx(5 / 6)
    assert result.chosen.threshold <= 0.45 and 25 <= result.chosen.min_voxels <= 1000
    assert result.scores[result.chosen] == pytest.approx(1.0)
    assert result.region_dice[result.chosen] == pytest.approx(1.0)
    # min_voxels 2000 would also remove case a's true core: ET Dice 0 there
    assert result.scores[type(result.chosen)(0.45, 2000)] == pytest.approx(5 / 6)
    assert result.gain == pytest.approx(1 / 6)
    assert result.as_config()["threshold"] == {"wt": 0.5, "tc": 0.5, "et": result.chosen.threshold}


def test_the_current_rule_is_kept_unless_beaten_by_more_than_min_gain():
    cases = [("a", *_case(0.9, True, 0))]  # already perfect with the current rule
    result = tune_postprocessing(iter(cases), REGIONS, inference_settings(), PostProcessing("et", 100))
    assert result.chosen == result.current and result.gain == 0
    improvable = [("a", *_case(0.45, True, 0))]
    kept = tune_postprocessing(iter(improvable), REGIONS, inference_settings(), PostProcessing("et", 100), min_gain=0.5)
    assert kept.chosen == kept.current  # the gain (1/3: ET Dice 0 -> 1 of three regions) is below 0.5


def _two_cores(second_is_true: bool) -> tuple[np.ndarray, np.ndarray]:
    """A 40^3 case with a core of 1000 voxels in edema and a second core component of 125 voxels far from it:
    true tumour (in the label too) or a false island (predicted only); WT and TC predicted at 0.9."""
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[2:20, 2:20, 2:20] = 2
    truth[5:15, 5:15, 5:15] = 1
    second = (slice(28, 33),) * 3
    if second_is_true:
        truth[second] = 1
    probs = np.zeros((3, 40, 40, 40), np.float32)
    probs[0][truth > 0] = probs[1][truth == 1] = 0.9
    probs[0][second] = probs[1][second] = 0.9
    return probs, truth


def test_the_largest_core_component_is_kept_only_where_it_raises_the_mean_dice():
    def tune(cases, **kw):
        return tune_postprocessing(iter(cases), REGIONS, inference_settings(), PostProcessing("et", 100), thresholds=[0.5],
                                   min_voxels=[0, 100], keep_largest=[[], ["tc"], ["rc"]], **kw)

    islands = tune([("a", *_two_cores(False)), ("b", *_two_cores(False))])
    assert islands.chosen.keep_largest == ("tc",) and islands.current.keep_largest == ()
    # TC Dice 2 * 1000 / (1000 + 1125) without the rule, 1 with it; WT (the island is still edema) and ET
    # (both empty) are the same either way
    wt = 2 * 18**3 / (2 * 18**3 + 125)
    assert islands.region_dice[islands.current] == 1.0 and islands.scores[islands.current] == pytest.approx((wt + 2000 / 2125 + 1) / 3)
    assert islands.scores[islands.chosen] == pytest.approx((wt + 2) / 3)
    assert islands.as_config()["postprocess"]["keep_largest"] == ["tc"]
    assert all(c.keep_largest != ("rc",) for c in islands.scores)  # the model has no RC: that choice is left out
    only_rc = tune_postprocessing(iter([("a", *_two_cores(False))]), REGIONS, inference_settings(), None, thresholds=[0.5],
                                  min_voxels=[0], keep_largest=[["rc"]])
    assert list(only_rc.scores) == [type(only_rc.current)(0.5, 0, ())]  # without a valid choice: the grids alone
    rule = postprocessing_for({"postprocess": None}, apply_tuned(inference_settings(), islands.as_config()).postprocess)
    assert rule == PostProcessing("et", islands.chosen.min_voxels, ("tc",))
    # where the second component is true tumour, the rule would remove it: the current rule stays
    true_second = tune([("a", *_two_cores(True)), ("b", *_two_cores(False))])
    assert true_second.chosen == true_second.current
    with_rule = type(true_second.current)(0.5, 100, ("tc",))
    assert true_second.scores[with_rule] == pytest.approx(true_second.scores[true_second.current])  # +1 case, -1 case
    lost = tune([("a", *_two_cores(True))])
    assert lost.chosen == lost.current and lost.scores[with_rule] < lost.scores[lost.current]


def test_unknown_region_and_empty_input_are_refused():
    with pytest.raises(ValueError, match="not one of the model's regions"):
        tune_postprocessing(iter([]), REGIONS, inference_settings(), None, region="netc")
    with pytest.raises(ValueError, match="no case"):
        tune_postprocessing(iter([]), REGIONS, inference_settings(), None)


def test_per_region_thresholds_are_validated():
    assert inference_settings(threshold={"et": 0.4}).thresholds(["wt", "tc", "et"]) == [0.5, 0.5, 0.4]
    assert inference_settings(threshold=0.3).thresholds(["wt", "et"]) == [0.3, 0.3]
    with pytest.raises(ValueError, match="probability"):
        inference_settings(threshold={"et": 1.2})
    with pytest.raises(ValueError, match="names regions"):
        inference_settings(threshold={"rc": 0.4}).thresholds(["wt", "tc", "et"])


def test_runs_hold_the_rule_and_an_ensemble_must_agree(tmp_path):
    cases = [("a", *_case(0.45, True, 0))]
    result = tune_postprocessing(iter(cases), REGIONS, inference_settings(), PostProcessing("et", 100),
                                 thresholds=[0.4, 0.5], min_voxels=[100])
    runs = [tmp_path / "fold0", tmp_path / "fold1"]
    for run in runs:
        (run / "checkpoints").mkdir(parents=True)
    write_tuned_postprocessing(result, runs)
    tuned, files = read_tuned_postprocessing([r / "checkpoints" / "last.ckpt" for r in runs])
    assert files == [r / TUNED_FILE for r in runs]
    assert tuned == {"threshold": {"wt": 0.5, "tc": 0.5, "et": 0.4},
                     "postprocess": {"region": "et", "min_voxels": 100, "keep_largest": []}}
    settings = apply_tuned(inference_settings(), tuned)
    assert settings.thresholds(["wt", "tc", "et"]) == [0.5, 0.5, 0.4] and settings.postprocess["min_voxels"] == 100
    assert read_tuned_postprocessing([tmp_path / "elsewhere" / "x.ckpt"]) is None
    other = yaml.safe_load((runs[1] / TUNED_FILE).read_text())
    other["threshold"]["et"] = 0.6
    (runs[1] / TUNED_FILE).write_text(yaml.safe_dump(other))
    with pytest.raises(ValueError, match="differs between .*fold0.*fold1"):
        read_tuned_postprocessing([r / "checkpoints" / "last.ckpt" for r in runs])


@pytest.mark.slow
def test_predict_applies_the_rule_tuned_on_its_probabilities(phantom_checkpoint, phantom_root, tmp_path):
    from lightning_brats.cli.predict import build_predictor, predict
    from lightning_brats.cli.tune_postprocessing import tune

    cases = sorted(p.name for p in phantom_root.iterdir() if p.is_dir())[:2]
    predicted = predict(compose_tool_config("predict", [
        f"ckpt_path={phantom_checkpoint}", f"input={phantom_root}", f"cases=[{','.join(cases)}]",
        f"output_dir={tmp_path / 'cv'}", "save_probabilities=true", "inference.flip_tta=false"], tmp_path))
    assert predicted["predicted"] == 2
    run = phantom_checkpoint.parent.parent
    cfg = compose_tool_config("tune_postprocessing", [
        "data=brats20", f"probabilities={tmp_path / 'cv'}", f"ground_truth={phantom_root}",
        f"write_to=[{run}]", f"output_dir={tmp_path / 'tuned'}", "thresholds=[0.3,0.5,0.7]", "min_voxels=[0,100]"],
        tmp_path)
    result = tune(cfg)
    try:
        assert sorted(result.cases) == cases
        written = yaml.safe_load((run / TUNED_FILE).read_text())
        assert written["threshold"]["et"] == result.chosen.threshold
        assert (tmp_path / "tuned" / "postprocessing_candidates.csv").is_file()
        # the best candidate's score is the best of the table, and no candidate beats the chosen one
        assert result.scores[result.chosen] == max(result.scores.values())
        predictor = build_predictor(compose_tool_config("predict", [f"ckpt_path={phantom_checkpoint}"], tmp_path))
        assert predictor.settings.thresholds(["wt", "tc", "et"])[2] == result.chosen.threshold
        assert (predictor.postprocess.min_voxels if predictor.postprocess else 0) == result.chosen.min_voxels
        assert (predictor.postprocess.keep_largest if predictor.postprocess else ()) == result.chosen.keep_largest
        assert {r["keep_largest"] for r in result.rows()} == {"", "tc"}  # conf/tune_postprocessing.yaml's choices
        untuned = build_predictor(compose_tool_config("predict", [f"ckpt_path={phantom_checkpoint}",
                                                                  "tuned_postprocessing=false"], tmp_path))
        assert untuned.settings.threshold == 0.5
    finally:  # the checkpoint's run is shared by the session's other tests
        (run / TUNED_FILE).unlink(missing_ok=True)
    probs = nib.load(str(tmp_path / "cv" / f"{cases[0]}_probabilities.nii.gz"))
    assert probs.shape[-1] == 3
