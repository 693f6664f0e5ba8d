"""What a finished search reports (tuning/summaries.py): the best completed trial."""

from tfp_advbnn.tuning.summaries import best_record


def test_best_record_takes_the_highest_completed_trial():
    def record(trial_id, status, robust):
        return {"trial_id": trial_id, "status": status, "metrics": {"val_robust_accuracy": robust}}

    records = [
        record("0", "COMPLETED", 0.2),
        record("1", "FAILED", None),
        record("2", "COMPLETED", 0.5),
        record("3", "COMPLETED", 0.5),
        record("4", "RUNNING", None),
        record("5", "COMPLETED", 0.1),
    ]
    assert best_record(records, "val_robust_accuracy")["trial_id"] == "2"
    assert best_record(records[:1] + records[5:], "val_robust_accuracy")["trial_id"] == "0"
    assert best_record([records[1], records[4]], "val_robust_accuracy") is None
