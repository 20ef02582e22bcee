"""Model lifecycle: GTO registry, promotion gate, retraining, rollback and batch scoring, run
end to end on a small drifting stream with the real CLI, DVC experiments and git tags."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, SMALL_MODELLING, make_project, run, write_params

from aif.lifecycle.registry import ARTIFACT

# A small stream where card testing starts on day 86 (2018-06-25). The first model trains on
# 2018-06-04..06-10 and is tested on 06-18..06-24, before the drift. As of 2018-08-14 (the
# monitor's current window end) labels are known before 08-07; the gate window is
# 07-31..08-06 and the challenger trains on 07-17..07-23, with tuning folds after the onset.
# One card a day is tested (5 would be most of this 300-card population within weeks); the
# calibration bound is looser than the default because this population's fraud rate is ~13%.
SCENARIO = {
    **SMALL_MODELLING,
    "simulate": {**SMALL_MODELLING["simulate"], "n_days": 135,
                 "drift": {"card_testing": {"enabled": True, "onset_day": 86,
                                            "cards_per_day": 1}}},
    "split": {"train_start": "2018-06-04", "train_days": 7, "test_days": 7},
    "evaluate": {**SMALL_MODELLING["evaluate"], "alert_budget": 30},
    "gate": {"max_calibration_error": 0.05},
    "monitor": {"reference": "2018-06-18:2018-06-25", "current": "2018-06-25:2018-08-14"},
}
AS_OF = "2018-08-14"


def aif(project: Path, *args: str, check: bool = False, **env):
    return run(["aif", *args], project, check=check, **env)


def tags(project: Path) -> list[str]:
    return run(["git", "tag", "--list"], project).stdout.split()


def experiments(project: Path) -> list[str]:
    return run(["git", "for-each-ref", "--format=%(refname)", "refs/exps/"],
               project).stdout.split()


def registry(project: Path) -> dict[str, dict]:
    shown = json.loads(aif(project, "registry", "show", "--json", check=True).stdout)
    return {v["name"]: v for v in shown}


def prod(project: Path) -> str:
    "The prod version as plain GTO reports it."
    shown = json.loads(run(["gto", "show", "--json"], project).stdout)
    return shown[ARTIFACT]["stage"]["prod"]


def records(project: Path, action: str) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((project / "reports/lifecycle").glob(f"*-{action}.json"))]


@pytest.fixture
def scenario_project(tmp_path: Path) -> Path:
    "The drifting stream, its first model trained, committed and registered as v0.0.1."
    project = make_project(tmp_path / "project")
    write_params(project, **SCENARIO)
    run(["dvc", "repro", "evaluate"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "first model"], project)
    aif(project, "registry", "register", check=True)
    return project


def test_drift_alert_retrains_promotes_and_rolls_back(scenario_project: Path):
    project = scenario_project

    # The first prod model passes the guardrails alone (there is no champion yet).
    assert aif(project, "registry", "promote", "v0.0.1").returncode == 0
    assert prod(project) == "v0.0.1"

    # A retraining whose experiment fails (too little history before the window) changes
    # nothing and says which stage failed, in one line.
    before = tags(project)
    failed = aif(project, "retrain", "--as-of", "2018-06-10")
    assert failed.returncode == 2
    assert "stage tune" in failed.stderr and "history" in failed.stderr
    assert tags(project) == before and prod(project) == "v0.0.1"

    # A retraining that fails after it registered and promoted its challenger (its decision
    # cannot be recorded: a file where the records folder should be) undoes both.
    (project / "reports/lifecycle").rename(project / "reports/lifecycle.kept")
    (project / "reports/lifecycle").write_text("a file where the records folder should be\n")
    failed = aif(project, "retrain", "--as-of", AS_OF)
    assert failed.returncode != 0 and "reports/lifecycle" in failed.stderr, failed.stderr
    assert tags(project) == before and prod(project) == "v0.0.1"
    assert len(registry(project)) == 1
    (project / "reports/lifecycle").unlink()
    (project / "reports/lifecycle.kept").rename(project / "reports/lifecycle")

    # The monitor alerts on the post-drift window and retrains as of its end (the same
    # experiment again, its stages from DVC's run cache).
    monitored = aif(project, "monitor", "--retrain-on-alert", "--run-id", "drift")
    assert monitored.returncode == 3, monitored.stderr
    versions = registry(project)
    assert set(versions) == {"v0.0.1", "v0.0.2"}
    assert versions["v0.0.2"]["training_window"].startswith("2018-07-17")
    assert versions["v0.0.2"]["test_window"] == "2018-07-31+7d"
    assert prod(project) == "v0.0.2" and "staging" in versions["v0.0.2"]["stages"]
    [decision] = records(project, "retrain-promote")
    assert decision["window"] == {**decision["window"], "start": "2018-07-31", "days": 7}
    stale = decision["champion"]["metrics"]["average_precision"]
    fresh = decision["challenger"]["metrics"]["average_precision"]
    assert decision["champion"]["version"] == "v0.0.1" and fresh > stale + 0.1
    assert all(check["passed"] for check in decision["checks"])
    assert any(c["check"].startswith("segment_recall") for c in decision["checks"])
    # the experiment holds the run; the workspace still has the first model's parameters
    assert len(experiments(project)) == 1
    assert yaml.safe_load((project / "params.yaml").read_text())["split"]["train_start"] \
        == "2018-06-04"

    # Idempotent: the same date and data again does nothing.
    again = aif(project, "retrain", "--as-of", AS_OF)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert len(experiments(project)) == 1 and prod(project) == "v0.0.2"

    # Fetch the prod model; DVC's own artifact command agrees on the bytes.
    fetched = project.parent / "prod-model"
    aif(project, "registry", "fetch", "--stage", "prod", str(fetched), check=True)
    assert json.loads((fetched / "version.json").read_text())["version"] == "v0.0.2"
    run(["dvc", "artifacts", "get", ".", ARTIFACT, "--stage", "prod", "-o",
         str(project.parent / "dvc-prod.txt")], project)
    assert (project.parent / "dvc-prod.txt").read_bytes() == (fetched / "model.txt").read_bytes()

    # Batch scoring with the fetched model equals offline scoring on the pipeline's features.
    scores = project.parent / "scores.parquet"
    aif(project, "score", "--model", str(fetched), "--input", "data/raw/transactions",
        "--output", str(scores), "--since", "2018-07-31", check=True)
    scored = pd.read_parquet(scores)
    from aif.features.store import read_features
    from aif.modelling.model import Model
    model = Model.load(fetched)
    offline = read_features(project / "data/processed/features.parquet").to_pandas()
    offline = offline[offline.tx_datetime >= pd.Timestamp("2018-07-31")].reset_index(drop=True)
    assert scored.transaction_id.tolist() == offline.transaction_id.tolist()
    expected = model.score(offline[model.features].to_numpy(np.float64))
    np.testing.assert_allclose(scored.score, expected, rtol=0, atol=1e-12)
    assert (scored.alert == (scored.score >= model.info["alert"]["threshold"])).all()
    assert set(scored.model_version) == {f"{ARTIFACT}@v0.0.2"}
    assert scored.fraud_probability.between(0, 1).all()
    # each score names its row in the input, to join it back to the export
    for _, row in scored.sample(20, random_state=0).iterrows():
        raw = pd.read_parquet(project / row.source_file).iloc[row.source_row - 1]
        assert raw.transaction_id == row.transaction_id and row.source_line == -1   # Parquet

    # Rollback: prod returns to v0.0.1 for aif, GTO and DVC alike, recorded like a promotion.
    assert aif(project, "registry", "rollback").returncode == 0
    assert prod(project) == "v0.0.1"
    old = project.parent / "v1"
    aif(project, "registry", "fetch", "--version", "v0.0.1", str(old), check=True)
    run(["dvc", "artifacts", "get", ".", ARTIFACT, "--stage", "prod", "-o",
         str(project.parent / "dvc-prod.txt"), "--force"], project)
    assert (project.parent / "dvc-prod.txt").read_bytes() == (old / "model.txt").read_bytes()
    [rolled] = records(project, "rollback")
    assert (rolled["from"], rolled["to"]) == ("v0.0.2", "v0.0.1")
    # nothing older than v0.0.1 was ever in prod
    assert aif(project, "registry", "rollback").returncode == 2


def test_registry_rules(tmp_path: Path):
    "Rules that need no data: checked with --force promotions on two committed models."
    project = make_project(tmp_path / "project")
    for i in (1, 2):
        for path, text in (("models/model.json", "{}"), ("reports/metrics.json", "{}"),
                           ("dvc.lock", f"schema: '2.0'\n# {i}\n")):
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text(text + "\n")
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-q", "-m", f"model {i}"], project)
        assert aif(project, "registry", "register").returncode == 0
    again = aif(project, "registry", "register")
    assert again.returncode == 2 and "already" in again.stderr
    assert aif(project, "registry", "rollback").returncode == 2   # nothing in prod
    # the decision is logged to W&B (offline here), and a key in the environment stays there
    aif(project, "registry", "promote", "v0.0.2", "--force", check=True, WANDB_MODE="offline",
        WANDB_API_KEY="not-a-real-key-5e1d")
    [logged] = (project / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"lifecycle" in logged.read_bytes()
    assert not any(b"not-a-real-key-5e1d" in f.read_bytes()
                   for f in (project / "wandb").rglob("*") if f.is_file())
    older = aif(project, "registry", "promote", "v0.0.1", "--force")
    assert older.returncode == 2 and "rollback" in older.stderr
    missing = aif(project, "registry", "fetch", "--version", "v9.9.9", str(tmp_path / "x"))
    assert missing.returncode == 2 and "v9.9.9" in missing.stderr
    assert not (tmp_path / "x").exists()
    staged = aif(project, "registry", "promote", "v0.0.1", "--stage", "staging")
    assert staged.returncode == 0
    listed = aif(project, "registry", "list", check=True).stdout
    assert "v0.0.1\tstaging" in listed and "v0.0.2\tprod" in listed
    [forced] = records(project, "promote")[:1]
    assert forced["forced"] is True and forced["checks"] == []

    # HEAD must pin what the workspace holds: an uncommitted model.json is refused
    (project / "models/model.json").write_text('{"changed": true}\n')
    dirty = aif(project, "registry", "register")
    assert dirty.returncode == 2 and "models/model.json" in dirty.stderr
    assert len(dirty.stderr.strip().splitlines()) == 1
    run(["git", "commit", "-q", "-am", "model 3"], project)
    aif(project, "registry", "register", check=True)
    aif(project, "registry", "promote", "v0.0.3", "--force", check=True)
    # v0.0.2's prod assignment is still active in GTO; only the holder is listed in prod
    listed = aif(project, "registry", "list", check=True).stdout
    assert [line.split("\t")[1] for line in listed.splitlines()] == ["staging", "-", "prod"]
    shown = json.loads(run(["gto", "show", "--json"], project).stdout)
    assert shown[ARTIFACT]["stage"]["prod"] == "v0.0.3"

    # a record that cannot be written is one line, and the promotion did not happen
    before = tags(project)
    (project / "reports/lifecycle").rename(project / "reports/lifecycle.kept")
    (project / "reports/lifecycle").write_text("a file where the records folder should be\n")
    run(["git", "commit", "-q", "-am", "model 4", "--allow-empty"], project)
    aif(project, "registry", "register", check=True)
    failed = aif(project, "registry", "promote", "v0.0.4", "--force")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "lifecycle record" in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
    assert set(tags(project)) - set(before) == {f"{ARTIFACT}@v0.0.4"}   # registered, not promoted


def test_artifact_is_declared_in_dvc_yaml():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["artifacts"][ARTIFACT]["path"] == "models/model.txt"
    gto = yaml.safe_load((REPO / ".gto").read_text())
    assert gto["stages"] == ["staging", "prod"]


def test_score_rejects_bad_arguments(trained_project: Path, tmp_path: Path):
    missing = aif(trained_project, "score", "--input", str(tmp_path / "none.csv"),
                  "--output", str(tmp_path / "out.parquet"))
    assert missing.returncode == 2 and "none.csv" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    wrong = aif(trained_project, "score", "--input", "data/raw/transactions",
                "--output", str(tmp_path / "out.txt"))
    assert wrong.returncode == 2 and ".parquet or .csv" in wrong.stderr
    assert not (tmp_path / "out.txt").exists()
    # a file ingest would refuse (a quarter of its rows broken): scored before, with a warning
    pd.DataFrame({"transaction_id": [1, 2, 3, 4], "customer_id": [5, 5, 6, 5],
                  "tx_datetime": ["2018-09-01 10:00:00", "2018-09-01 10:05:00",
                                  "2018-09-01 11:00:00", "2018-09-02 09:00:00"],
                  "terminal_id": [9, 8, 9, 9], "tx_amount": [12.5, 180.0, -3.0, 40.0],
                  "tx_fraud": [0, 1, 0, 0]}).to_csv(tmp_path / "broken.csv", index=False)
    broken = aif(trained_project, "score", "--input", str(tmp_path / "broken.csv"),
                 "--output", str(tmp_path / "out.parquet"))
    assert broken.returncode == 2, broken.stderr
    assert broken.stderr.strip().splitlines() == [
        "score: 1 of 4 rows (25.00%) broke rules, above ingest.max_invalid_fraction=0.001; "
        f"column tx_amount rule non_negative: 1 row, first at line 4 of {tmp_path}/broken.csv "
        "(value '-3.0')"]
    assert list(tmp_path.glob("out*")) == []   # neither scores nor a quarantine
    # the valid rows alone: scored, each with its row in the file, and a word on its history
    pd.read_csv(tmp_path / "broken.csv").drop(index=2).to_csv(tmp_path / "few.csv", index=False)
    few = aif(trained_project, "score", "--input", str(tmp_path / "few.csv"),
              "--output", str(tmp_path / "few.parquet"), check=True)
    assert "3 of 3 rows scored are within" in few.stderr and "--since" in few.stderr
    scored = pd.read_parquet(tmp_path / "few.parquet")
    assert scored.source_line.tolist() == [2, 3, 4] and scored.source_row.tolist() == [1, 2, 3]
    assert set(scored.source_file) == {str(tmp_path / "few.csv")}


@pytest.mark.parametrize("name, must_run", [
    ("ci.yml", ["make test", "make lint", "dvc repro"]),
    ("retrain.yml", ["aif retrain --as-of", "--push", "fetch-depth: 0"]),
])
def test_workflows_are_valid_github_actions(name: str, must_run: list[str]):
    workflow = REPO / ".github/workflows" / name
    result = run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                  str(workflow)], REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = workflow.read_text()
    assert all(command in text for command in must_run)
    if name == "retrain.yml":
        on = yaml.safe_load(text)[True]   # YAML reads the key `on` as True
        assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
