"""The evaluation summary: a class that a case neither contains nor predicts has no Dice there, and
does not lift the class's mean (two empty sets would otherwise count as a perfect 1.0)."""

from MultiTaskSegLib.training.evaluation import summarize, write_report
from conftest import small_random_bundle


def rows():
    return [
        {"case": "c0", "task": "coronary", "dice": {"coronary arteries": 0.6}, "absent": [], "alien_class_rate": 0.0},
        {"case": "c1", "task": "coronary", "dice": {}, "absent": ["coronary arteries"], "alien_class_rate": 0.0},
        {"case": "c2", "task": "coronary", "dice": {"coronary arteries": 0.0}, "absent": [], "alien_class_rate": 0.0},
        {"case": "b0", "task": "breast", "dice": {}, "absent": ["pectoral muscle"], "alien_class_rate": 0.0},
    ]


def test_a_class_absent_from_reference_and_prediction_is_left_out_of_the_mean():
    summary = summarize(rows())
    assert summary["coronary"]["mean_dice"] == {"coronary arteries": 0.3}  # not (0.6 + 1.0 + 0.0) / 3
    assert summary["coronary"]["cases"] == 3
    assert summary["breast"]["mean_dice"] == {"pectoral muscle": None}


def test_the_report_says_absent_instead_of_a_number(tmp_path):
    results = {"cases": rows(), "thresholds": {}, "operating_points": {}, "summary": summarize(rows())}
    write_report(results, small_random_bundle(0), tmp_path / "report")
    text = (tmp_path / "report.md").read_text()
    assert "| c1 | coronary | coronary arteries absent |" in text
    assert "| pectoral muscle | n/a (in no case) |" in text
