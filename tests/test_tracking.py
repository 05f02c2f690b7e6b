"""raykd.tracking's pure parts: how a trial run is named in the MLflow UI (no store, no Ray)."""

from raykd.tracking.runs import trial_run_name

SEARCHED = ["distill.temperature", "distill.alpha_ce", "optim.learning_rate"]


def test_a_trial_run_is_named_by_its_number_and_what_it_tried():
    config = {"distill.temperature": 4.8412, "distill.alpha_ce": 0.72108, "distill.alpha_hard": 0.27892,
              "optim.learning_rate": 1.6433e-4, "optim.warmup_ratio": 0.1}
    # The tied alpha and the space's constant are not what the trial tried: left out.
    assert trial_run_name(3, config, SEARCHED) == "trial 3 · T 4.84 · alpha_ce 0.721 · lr 1.64e-4"


def test_values_read_short_whatever_their_kind():
    config = {"optim.learning_rate": 3e-3, "models.init_from_teacher_layers": [0, 2, 4], "optim.batch_size": 16,
              "optim.num_epochs": 2.0, "models.student": "/data/checkpoints/a-very-long-folder-name/bert-small-uncased"}
    name = trial_run_name(12, config, list(config))
    assert name == ("trial 12 · lr 3e-3 · layers [0,2,4] · batch_size 16 · epochs 2 · "
                    "student …-folder-name/bert-small-uncased")
    assert trial_run_name(1, {}, SEARCHED) == "trial 1"  # a key the config lacks is not invented


def test_a_trial_run_name_carries_the_id_the_console_shows():
    assert trial_run_name(2, {"distill.temperature": 5.94}, ["distill.temperature"], "db375ef1_00001") == \
        "trial 2 (db375ef1) · T 5.94"
