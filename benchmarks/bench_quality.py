"""Model quality on the handbook's Chapter 5 protocol, over simulator seeds 0-2: the mean over
four prequential test weeks (training starts 2018-07-25, 08-01, 08-08, 08-15; 7 days, 7 days
of delay, 7 days of test), with hyperparameters tuned on the four validation folds five weeks
earlier; and the single test week, and the time the default tuning takes.

Goal (issue 17): prequential mean AP >= 0.72 and card precision@100 >= 0.31, mean over the
seeds, ROC AUC not below the model's before the change (0.869 on seed 0). What moved the
figures is measured on the validation folds only: benchmarks/bench_quality_folds.py.
`AIF_BENCH_QUALITY_DIR=dir` keeps the projects.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from common import make_project, measure, report, run, write_params

SEEDS = (0, 1, 2)
GOAL = {"average_precision": 0.72, "card_precision_at_k": 0.31}
HEADLINE = ("average_precision", "roc_auc", "card_precision_at_k")


# the default feature groups before amount_peaks (issue 17): the model the goal is set against
BEFORE = ["baseline", "amount_profile", "terminal_history"]


def pipeline(root: Path, seed: int, groups: list[str] | None) -> tuple[Path, float]:
    "The whole pipeline on simulator seed `seed`; the tune stage's wall time."
    project = root / f"pipeline-seed-{seed}{'-before' if groups else ''}"
    make_project(project)
    write_params(project, simulate={"seed": seed}, **({"features": {"groups": groups}}
                                                      if groups else {}))
    run(["dvc", "repro", "featurize"], project, WANDB_MODE="disabled")
    tune_wall, _ = measure(["dvc", "repro", "tune"], project)
    run(["dvc", "repro", "evaluate"], project, WANDB_MODE="disabled")
    return project, tune_wall


def main() -> bool:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--before", action="store_true",
                        help=f"the feature groups before amount_peaks: {', '.join(BEFORE)}")
    args = parser.parse_args()
    seeds = args.seeds
    per_seed, tune_walls = {}, []
    keep = os.environ.get("AIF_BENCH_QUALITY_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            project, tune_wall = pipeline(Path(keep or tmp), seed, BEFORE if args.before else None)
            tune_walls.append(round(tune_wall, 1))
            per_seed[seed] = json.loads((project / "reports/metrics.json").read_text())
            tuning = json.loads((project / "reports/tuning.json").read_text())
            per_seed[seed]["tuning"] = {k: round(tuning[k], 4) for k in
                                        ("best_value", "lightgbm_defaults_value")}
    figures = {}
    for who in ("model", "baseline"):
        for k in HEADLINE:
            means = [per_seed[s]["prequential"][who][k]["mean"] for s in seeds]
            figures[f"prequential_{who}_{k}"] = {
                "mean_over_seeds": round(statistics.mean(means), 4),
                "per_seed": [round(v, 4) for v in means],
                "fold_sd_per_seed": [round(per_seed[s]["prequential"][who][k]["sd"], 4)
                                     for s in seeds]}
            figures[f"test_week_{who}_{k}"] = [round(per_seed[s][who][k], 4) for s in seeds]
    met = {k: figures[f"prequential_model_{k}"]["mean_over_seeds"] >= goal
           for k, goal in GOAL.items()}
    print(f"quality: handbook Chapter 5 protocol (4 prequential test weeks), seeds {seeds}")
    tuning = {s: per_seed[s]["tuning"] for s in seeds}   # mean validation AP, tuned vs defaults
    report("quality_before" if args.before else "quality",
           {**figures, "tuning": tuning, "tune_wall_s": tune_walls, "goal_met": met})
    return all(met.values())


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
