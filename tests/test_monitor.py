"""The drift report: papermill on a real kernel, HTML without code, summary, history, exit
codes; bad parameters fail with a clear message and the failure code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run, write_params

LEVELS = {"ok", "warn", "alert"}


def monitor(project: Path, *args: str):
    return run(["aif", "monitor", *args], project, check=False)


def test_report_runs_and_writes_everything(trained_project: Path):
    result = monitor(trained_project, "--run-id", "t1")
    assert result.returncode in (0, 3), result.stderr
    folder = trained_project / "reports/monitoring/t1"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] in LEVELS
    assert (result.returncode == 3) == (summary["status"] == "alert")
    assert summary["recommended_action"] in {"none", "investigate", "retrain"}
    assert summary["calendar_features_left_out"] == ["tx_during_night", "tx_during_weekend"]
    assert len(summary["chunks"]) == 9 and summary["features"]
    labelled = [c["labelled"] for c in summary["performance"]["chunks"]]
    assert labelled[0] and not labelled[-1]   # labels known only up to 7 days before the end
    html = (folder / "drift_report.html").read_text()
    assert "Data drift per feature" in html and "numeric_profile(" not in html  # no code cells
    executed = json.loads((folder / "drift_report.ipynb").read_text())
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
    history = (trained_project / "reports/monitoring/history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["run_id"] == "t1"


def test_dvc_stage_keeps_latest_and_does_not_fail_on_alert(trained_project: Path):
    status = json.loads(run(["dvc", "status", "--json", "monitor"], trained_project).stdout)
    assert status == {}   # ran in `dvc repro` with the rest
    summary = json.loads((trained_project / "reports/monitoring/latest/summary.json").read_text())
    assert summary["run_id"] == "latest"


@pytest.mark.parametrize("args, message", [
    (["--reference", "2018-06-24:2018-07-01", "--current", "2018-06-20:2018-06-30"],
     "starts before the reference"),
    (["--reference", "2018-06-24:2018-06-24", "--current", "2018-07-01:2018-07-10"], "is empty"),
])
def test_bad_windows_fail_with_a_clear_message(trained_project: Path, args, message):
    result = monitor(trained_project, "--run-id", "bad", *args)
    assert result.returncode == 4 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (trained_project / "reports/monitoring/bad/drift_report.ipynb").exists()  # kept


def test_missing_model_and_malformed_window(trained_project: Path, tmp_path: Path):
    malformed = monitor(trained_project, "--reference", "last week")
    assert malformed.returncode == 2 and "START:END" in malformed.stderr
    (trained_project / "models/model.txt").rename(tmp_path / "model.txt")
    try:
        missing = monitor(trained_project, "--run-id", "nomodel2")
        assert missing.returncode == 4 and "no model here" in missing.stderr
    finally:
        (tmp_path / "model.txt").rename(trained_project / "models/model.txt")


def test_scheduled_workflow_is_valid_github_actions():
    from conftest import REPO
    workflow = REPO / ".github/workflows/drift-report.yml"
    result = run(["check-jsonschema", "--builtin-schema", "vendor.github-workflows",
                  str(workflow)], REPO, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    import yaml
    spec = yaml.safe_load(workflow.read_text())
    assert spec[True]["schedule"][0]["cron"]   # YAML reads the key `on` as True
    assert "aif monitor" in workflow.read_text()


def test_thresholds_are_parameters_and_alert_exits_3(trained_project: Path):
    params = trained_project / "params.yaml"
    original = params.read_text()
    try:
        write_params(trained_project, monitor={"thresholds": {"psi": [0.0001, 0.0002],
                                                              "wasserstein": [0.0001, 0.0002]}})
        result = monitor(trained_project, "--run-id", "strict", "--no-history")
        summary = json.loads(
            (trained_project / "reports/monitoring/strict/summary.json").read_text())
        assert result.returncode == 3 and summary["status"] == "alert"
        assert summary["recommended_action"] == "retrain"
        assert any(r.startswith("data drift:") for r in summary["reasons"])
        assert summary["thresholds"]["psi"] == [0.0001, 0.0002]
        relaxed = monitor(trained_project, "--run-id", "strict2", "--no-history",
                          "--no-alert-exit")
        assert relaxed.returncode == 0
        # a chunk of fewer than min_chunk_rows rows is not judged for drift (its shares are
        # noise): here none is, and the same strict thresholds find no drift
        write_params(trained_project, monitor={"thresholds": {"psi": [0.0001, 0.0002],
                                                              "wasserstein": [0.0001, 0.0002]},
                                               "min_chunk_rows": 10**9})
        monitor(trained_project, "--run-id", "few", "--no-history", "--no-alert-exit")
        summary = json.loads((trained_project / "reports/monitoring/few/summary.json").read_text())
        assert len(summary["chunks_not_judged"]) == len(summary["chunks"]) > 0
        assert not any(r.startswith(("data drift:", "prediction drift:"))
                       for r in summary["reasons"])
    finally:
        params.write_text(original)


def test_the_report_reads_offline_in_a_browser(trained_project: Path, tmp_path: Path):
    "The status first, every figure shown, nothing fetched: the HTML alone is the report."
    from browser import HEIGHT, WIDTH, box, browser, images_loaded, requests_made

    folder = trained_project / "reports/monitoring/latest"
    summary = json.loads((folder / "summary.json").read_text())
    html = (folder / "drift_report.html").read_text()
    fetched = re.findall(r'(?:src|href)="(https?:[^"]+)"|from [\'"](https?:[^\'"]+)', html)
    assert fetched == []   # scripts, styles, images and modules all inline
    with browser() as driver:
        driver.get((folder / "drift_report.html").as_uri())
        banner = box(driver, "#status-banner")
        assert 0 <= banner["top"] < banner["bottom"] <= HEIGHT and banner["right"] <= WIDTH
        text = driver.find_element("id", "status-banner").text
        assert text.startswith(summary["status"].upper())
        assert images_loaded(driver) == (3, 3)   # features, scores and alert rate, performance
        assert [url for url in requests_made(driver)
                if not url.startswith(("data:", "file:"))] == []
        page = driver.find_element("tag name", "body").text
        for section in ("Data drift per feature", "Data quality", "Prediction drift",
                        "Performance", "Concept drift"):
            assert section in page
        assert "Out[" not in page and "In [" not in page   # no prompts
        assert "score PSI: up to" in page and "alert rate:" in page and "ADWIN watched" in page
        driver.save_screenshot(str(tmp_path / "drift_report.png"))


def test_summary_says_what_the_pipeline_made(trained_project: Path):
    "`aif summary`, the end of `make repro`: the test figures as written, and where things are."
    metrics = json.loads((trained_project / "reports/metrics.json").read_text())["model"]
    out = run(["aif", "summary"], trained_project).stdout
    assert f"AP                     {metrics['average_precision']:.3f} (baseline" in out
    assert f"card precision@{metrics['k']}" in out
    assert "reports/monitoring/latest/drift_report.html" in out and "reports/model_card.md" in out
    assert max(map(len, out.splitlines())) <= 100   # readable in a terminal
