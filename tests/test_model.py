"""Tune, train, evaluate on a small config with the real stages: Optuna on SQLite, LightGBM
text models, DVC metrics, plots and experiments, W&B offline."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run, write_params

MODEL_METRICS = {"roc_auc", "average_precision", "card_precision_at_k", "k", "recall_at_budget",
                 "fraud_amount_caught"}


@pytest.fixture(scope="module")
def pipeline(trained_project: Path) -> Path:
    return trained_project


@pytest.fixture
def own_pipeline(trained_project: Path, tmp_path: Path) -> Path:
    "A private copy for tests that rerun or apply experiments: the shared project stays as run."
    copy = tmp_path / "project"
    shutil.copytree(trained_project, copy, symlinks=True)
    return copy


def test_tuning_outputs_and_study(pipeline: Path):
    best = json.loads((pipeline / "models/best_params.json").read_text())
    report = json.loads((pipeline / "reports/tuning.json").read_text())
    space = yaml.safe_load((pipeline / "params.yaml").read_text())["tune"]["search_space"]
    assert set(best["params"]) == set(report["best_params"]) == set(space)
    assert best["num_boost_round"] >= 1 and report["n_trials"] == 3
    assert len(report["folds"]) == 2 and "lightgbm_defaults_value" in report
    with sqlite3.connect(pipeline / "models/optuna.db") as db:
        names = [r[0] for r in db.execute("select study_name from studies")]
        n_trials = db.execute("select count(*) from trials").fetchone()[0]
    assert names == [best["study"]] and n_trials == 3
    assert (pipeline / "reports/figures/tuning_history.png").stat().st_size > 1000


def test_model_is_lightgbm_text_with_metadata(pipeline: Path):
    models = pipeline / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [
        "best_params.json", "model.json", "model.txt", "optuna.db"]
    booster = lgb.Booster(model_file=str(models / "model.txt"))
    info = json.loads((models / "model.json").read_text())
    assert booster.feature_name() == info["features"]
    catalog = json.loads((pipeline / "reports/features.json").read_text())
    assert info["features"] == [f["name"] for f in catalog["features"]]
    # the model carries each feature's full spec, as the catalog describes it
    specs = {s["name"]: s for s in info["feature_specs"]}
    assert list(specs) == info["features"]
    for entry in catalog["features"]:
        spec = specs[entry["name"]]
        assert (spec["entity"], spec["aggregation"]) == (entry["entity"], entry["aggregation"])
        if entry["uses_labels"]:   # the label delay the model was trained with
            assert spec["lag_days"] == entry["label_delay_days"] == 7
    assert info["training_window"] == {"start": "2018-06-10", "end": "2018-06-17",
                                       "label_delay_days": 7}
    assert info["rows"]["train"] > 0 and len(info["data_sha256"]) == 64
    assert {"lightgbm", "numpy", "pandas"} <= set(info["versions"])
    assert 0 < info["alert"]["threshold"] < 1
    cal = info["calibration"]
    assert cal["scores"] == sorted(cal["scores"]) and 0 <= min(cal["probabilities"])


def test_metrics_plots_segments_and_card(pipeline: Path):
    metrics = json.loads((pipeline / "reports/metrics.json").read_text())
    assert MODEL_METRICS <= set(metrics["model"]) and MODEL_METRICS <= set(metrics["baseline"])
    assert metrics["test"]["start"] == "2018-06-24" and metrics["test"]["frauds"] > 0
    assert 0.5 < metrics["model"]["roc_auc"] <= 1 and metrics["model"]["k"] == 10
    shown = json.loads(run(["dvc", "plots", "show", "--json"], pipeline).stdout)
    for title in ("ROC, test week", "Precision-recall, test week", "Tuning history",
                  "Calibration of the fraud probability", "Share of transactions by model score",
                  "Card precision@k per test day (day 1 is the first of the test week)"):
        assert shown["data"][title][0]["type"] == "vega", title
    assert not shown.get("errors")
    segments = pd.read_csv(pipeline / "reports/segments.csv")
    assert set(segments.segmentation) == {"amount", "time", "week", "card"}
    assert (segments.groupby("segmentation").transactions.sum()
            == metrics["test"]["transactions"]).all()
    card = (pipeline / "reports/model_card.md").read_text()
    assert "## Intended use" in card and "baseline" in card and "## Limitations" in card
    for figure in ("roc_pr", "calibration", "feature_importance", "shap_summary",
                   "score_distribution", "card_precision_per_day"):
        assert (pipeline / f"reports/figures/{figure}.png").stat().st_size > 1000, figure


def test_wandb_ran_offline_and_never_wrote_the_key(pipeline: Path):
    runs = list((pipeline / "wandb").glob("offline-run-*"))
    assert len(runs) == 3   # tune, train, evaluate
    for path in (pipeline / "wandb").rglob("*"):
        if path.is_file():
            assert b"not-a-real-key-9f3b2c" not in path.read_bytes(), path


def test_rerun_gives_the_same_bytes(own_pipeline: Path):
    pipeline = own_pipeline
    before = {p: (pipeline / p).read_bytes() for p in
              ("models/model.txt", "models/model.json", "models/best_params.json",
               "reports/metrics.json")}
    run(["dvc", "repro", "-f", "-s", "train"], pipeline)
    run(["dvc", "repro", "-f", "-s", "evaluate"], pipeline)
    assert {p: (pipeline / p).read_bytes() for p in before} == before
    assert "up to date" in run(["dvc", "repro"], pipeline).stdout


def test_experiments_override_and_show(own_pipeline: Path):
    pipeline = own_pipeline
    run(["dvc", "exp", "run", "-S", "train.num_leaves=5", "-n", "small-trees"], pipeline)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], pipeline).stdout)
    text = json.dumps(shown)
    assert "small-trees" in text and "average_precision" in text
    run(["dvc", "exp", "apply", "small-trees"], pipeline)
    info = json.loads((pipeline / "models/model.json").read_text())
    assert info["params"]["num_leaves"] == 5 and info["overrides"] == {"num_leaves": 5}


def test_split_change_as_experiment_and_tune_resume(modelling_project: Path):
    run(["dvc", "repro", "tune"], modelling_project)   # the stages the study needs, no more
    run(["git", "add", "-A"], modelling_project)
    run(["git", "commit", "-q", "-m", "base"], modelling_project)
    first = json.loads((modelling_project / "models/best_params.json").read_text())
    # A bigger budget resumes the same study; it does not start again.
    write_params(modelling_project, tune={"n_trials": 5})
    run(["dvc", "repro", "tune"], modelling_project)
    resumed = json.loads((modelling_project / "reports/tuning.json").read_text())
    assert resumed["study"] == first["study"] and resumed["n_trials"] == 5
    # A wider training window is a new problem: a new study, via an experiment.
    run(["dvc", "exp", "run", "tune", "-S", "split.train_days=14", "-S", "tune.n_trials=3"],
        modelling_project)
    with sqlite3.connect(modelling_project / "models/optuna.db") as db:
        studies = {r[0] for r in db.execute("select study_name from studies")}
    assert len(studies) == 2 and first["study"] in studies


def test_too_little_history_fails_clearly(modelling_project: Path):
    write_params(modelling_project, split={"train_start": "2018-05-01"})
    run(["dvc", "repro", "featurize"], modelling_project)
    result = run(["aif", "tune"], modelling_project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "history" in result.stderr and "split.train_start" in result.stderr


def test_dvc_plots_render_offline_in_a_browser(pipeline: Path, tmp_path: Path):
    "`dvc plots show` through the inlined page template: every Vega plot drawn, nothing fetched."
    from browser import browser, requests_made
    from selenium.webdriver.support.wait import WebDriverWait

    run(["aif", "plots-page"], pipeline)   # what `make install` does in the workspace
    out = tmp_path / "plots"
    run(["dvc", "plots", "show", "-o", str(out)], pipeline)
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and page.count("vegaEmbed('#") == 6
    with browser() as driver:
        driver.get((out / "index.html").as_uri())
        drawn = "return document.querySelectorAll('.vega-embed svg.marks').length"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(drawn) == 6)
        assert [url for url in requests_made(driver)
                if not url.startswith(("data:", "file:"))] == []
        driver.save_screenshot(str(tmp_path / "dvc_plots.png"))


def test_prequential_test_folds(pipeline: Path):
    """The handbook's protocol: the test week and the next ones that fit in the data; after
    the first (the single test week itself) each refits the model and the baseline."""
    metrics = json.loads((pipeline / "reports/metrics.json").read_text())
    folds = metrics["prequential"]
    start = metrics["test"]["start"]
    # 100 days of data end 2018-07-09: weeks from 06-24 and 07-01 fit, 07-08 does not
    for who in ("model", "baseline"):
        for metric in ("average_precision", "roc_auc", "card_precision_at_k"):
            summary = folds[who][metric]
            assert list(summary["folds"]) == [start, "2018-07-01"]
            values = list(summary["folds"].values())
            assert np.isclose(summary["mean"], np.mean(values))
            assert np.isclose(summary["sd"], np.std(values, ddof=1))
            # the first fold is the single test week, scored by the trained model and baseline
            assert np.isclose(summary["folds"][start], metrics[who][metric]), (who, metric)
    assert (pipeline / "reports/figures/prequential.png").stat().st_size > 10_000
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline).stdout)
    assert "prequential" in json.dumps(shown)


def test_compiled_trees_score_a_batch_on_threads_as_row_by_row(pipeline: Path, tmp_path: Path):
    """The service scores a large batch with the compiled trees on several threads: every row
    gets the score it gets alone, to the bit, and LightGBM's own to 1e-9."""
    from aif.modelling.model import PARALLEL_ROWS, Model, prediction_threads

    model = Model.load(pipeline / "models").compile(tmp_path / "compiled")
    rows = pd.read_parquet(pipeline / "data/processed/features.parquet")
    X = model.matrix(rows.iloc[:PARALLEL_ROWS + 1001])   # an odd split across the threads
    assert prediction_threads(len(X)) > 1 or (os.cpu_count() or 1) == 1
    batch = model.score(X)
    alone = np.concatenate([model.score(X[i:i + 1]) for i in range(len(X))])
    assert batch.tobytes() == alone.tobytes()
    np.testing.assert_allclose(batch, model.booster.predict(X), rtol=0, atol=1e-9)


def test_the_baseline_takes_features_with_missing_values():
    """A declared feature over a nullable attribute can be NaN, which the logistic-regression
    baseline cannot take (`aif evaluate` raised): it gets the training median and a
    was-missing column; without a missing value the baseline is the plain regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aif.modelling.evaluate import baseline_scores

    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    train["tx_fraud"] = (train.a + rng.normal(size=400) > 1).astype(int)
    test = train.sample(frac=1, random_state=1)
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    plain.fit(train[["a", "b"]].to_numpy(), train.tx_fraud.to_numpy())
    assert np.array_equal(baseline_scores(train, test, ["a", "b"], 0),
                          plain.predict_proba(test[["a", "b"]].to_numpy())[:, 1])
    train.loc[::7, "a"], test.loc[::5, "b"] = np.nan, np.nan
    scores = baseline_scores(train, test, ["a", "b"], 0)
    assert np.isfinite(scores).all() and roc_auc_score(test.tx_fraud, scores) > 0.75
