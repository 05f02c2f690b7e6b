"""raykd.tracking without a Ray cluster: how a trial run is named in the MLflow UI, and the runs the
Tune callback writes (a stub Tune trial, a local sqlite store)."""

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


def test_trial_runs_nest_under_the_study_and_a_resumed_trial_keeps_its_run(tmp_path):
    # A real (stub) Tune trial and a real sqlite store; no Ray cluster. The callback is pickled
    # with the experiment, so a resumed search starts from a copy that has seen no trial.
    import pickle

    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

    from raykd.tracking.callback import TrialRunsCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, run_name="study").info.run_id
    trial = Trial("_trial_driver", config={"distill.temperature": 4.8412, "optim.warmup_ratio": 0.1},
                  trial_id="db375ef1_00003", experiment_tag="3_distill.temperature=4.84", stub=True)
    callback = TrialRunsCallback(uri, "e", parent, ["distill.temperature"])
    callback.setup()
    callback.log_trial_start(trial)
    callback.log_trial_result(0, trial, {"round": 2, "eval_f1": 50.0, "train_loss": 1.5, "checkpoint_path": "x"})
    trial.run_metadata.last_result = {"round": 2, "final": False}
    callback.log_trial_end(trial)

    resumed = pickle.loads(pickle.dumps(callback))
    resumed.setup()
    resumed.log_trial_start(trial)
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "trial 3 (db375ef1) · T 4.84" and run.info.status == "RUNNING"
    assert run.data.tags["raykd.trial_id"] == "db375ef1_00003" and run.data.tags["stopped_early"] == "true"
    assert run.data.metrics == {"eval_f1": 50.0, "train_loss": 1.5}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_f1")] == [2]  # the round
    assert run.data.params == {"distill.temperature": "4.8412", "optim.warmup_ratio": "0.1"}
