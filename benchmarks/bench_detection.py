"""Drift detection quality: for each simulator drift scenario and seed, how many daily chunks
after the onset the report first reaches `alert`; and, on 60 days without drift, how many
alerts it raises (target: none).

The model is trained before the onset, so it is the same with or without drift (the simulator
draws each day from its own seed): each seed trains once, with the tuned parameters committed
in models/best_params.json, and every scenario reuses that model.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import make_project, report, run, write_params

SEEDS = (0, 1, 2)
ONSET_DAY = 150                       # 2018-08-29
ONSET = np.datetime64("2018-04-01") + np.timedelta64(ONSET_DAY, "D")
SCENARIOS = ("spend_shift", "card_testing", "activity_surge")
REFERENCE = f"2018-08-15:{ONSET}"
CURRENT = f"{ONSET}:2018-10-01"
QUIET = ("2018-07-18:2018-08-02", "2018-08-02:2018-10-01")   # 60 days, no drift
REPO = Path(__file__).resolve().parents[1]


def days_after_onset(day: str) -> int:
    return int((np.datetime64(day) - ONSET) / np.timedelta64(1, "D"))


def data(project: Path) -> None:
    run(["dvc", "repro", "featurize"], project)


def summary(project: Path, reference: str, current: str, run_id: str) -> dict:
    result = run(["aif", "monitor", "--reference", reference, "--current", current,
                  "--run-id", run_id, "--no-history"], project, check=False)
    if result.returncode not in (0, 3):
        raise RuntimeError(result.stderr)
    return json.loads((project / "reports/monitoring" / run_id / "summary.json").read_text())


def main() -> bool:
    delays, false_alarms, concept = {s: [] for s in SCENARIOS}, [], {s: [] for s in SCENARIOS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            base = make_project(Path(tmp) / f"seed-{seed}")
            write_params(base, simulate={"seed": seed})
            data(base)
            (base / "models").mkdir(exist_ok=True)
            shutil.copy(REPO / "models/best_params.json", base / "models/best_params.json")
            run(["aif", "train"], base, WANDB_MODE="disabled")
            quiet = summary(base, *QUIET, "quiet")
            false_alarms.append(sum(c["level"] == "alert" for c in quiet["chunks"]))
            for scenario in SCENARIOS:
                project = make_project(Path(tmp) / f"seed-{seed}-{scenario}")
                write_params(project, simulate={"seed": seed, "drift": {
                    scenario: {"enabled": True, "onset_day": ONSET_DAY}}})
                data(project)
                shutil.copytree(base / "models", project / "models", dirs_exist_ok=True)
                s = summary(project, REFERENCE, CURRENT, scenario)
                first = s["first_alert_chunk"]
                delays[scenario].append(None if first is None else days_after_onset(first))
                fired = s["concept_drift_at"]
                concept[scenario].append(None if not fired else days_after_onset(fired[0][:10]))
    ok = all(d is not None and d <= 2 for ds in delays.values() for d in ds) and \
        not any(false_alarms)
    print(f"detection: onset {ONSET}, reference {REFERENCE}, current {CURRENT}")
    report("detection", {
        "alert_delay_days": delays, "false_alarm_chunks_60_quiet_days": false_alarms,
        "concept_drift_first_fired_days_after_onset": concept,
        "target": "alert within 2 daily chunks of onset; no alert on 60 quiet days",
        "meets_target": ok})
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
