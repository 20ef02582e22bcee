"""Model quality on the default protocol (handbook's test week), over simulator seeds, with a
feature-group ablation, and the time the default tuning takes.

Targets (issue 4): test AP >= 0.70, ROC AUC >= 0.88, card precision@100 >= 0.30; default tuning
<= 120 s and better than LightGBM's defaults on the same folds.
"""
from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from common import make_project, measure, report, run, write_params

SEEDS = (0, 1, 2)
TARGETS = {"average_precision": 0.70, "roc_auc": 0.88, "card_precision_at_k": 0.30}
HEADLINE = ("average_precision", "roc_auc", "card_precision_at_k")


def pipeline(tmp: Path, seed: int) -> tuple[Path, float]:
    project = make_project(tmp / f"seed-{seed}")
    write_params(project, simulate={"seed": seed})
    run(["dvc", "repro", "featurize"], project, WANDB_MODE="disabled")
    tune_wall, _ = measure(["dvc", "repro", "tune"], project)
    run(["dvc", "repro"], project, WANDB_MODE="disabled")
    return project, tune_wall


def ablation(project: Path) -> dict[str, dict]:
    "Retrain with the tuned parameters on each feature-group set; score the same test week."
    import os
    os.chdir(project)
    from aif.config.params import FEATURE_GROUPS, load_params
    from aif.features.specs import feature_names, feature_specs
    from aif.metrics import score_metrics
    from aif.modelling.model import fit_booster
    from aif.modelling.split import load_periods, split_frame, test_protocol
    from aif.modelling.train import training_params

    params = load_params(project / "params.yaml")
    best = json.loads((project / "models/best_params.json").read_text())
    lgb_params, rounds = training_params(best, params)
    protocol = test_protocol(params.split, params.label_delay_days)
    everything = feature_names(feature_specs(replace(params.features, groups=FEATURE_GROUPS),
                                              params.label_delay_days))
    # Every group's features, computed beside the pipeline's (which holds the default set).
    all_groups = project / "all_groups.yaml"
    all_groups.write_text(yaml.safe_dump({**yaml.safe_load((project / "params.yaml").read_text()),
                                          "features": {"groups": list(FEATURE_GROUPS)}}))
    out = project / "ablation_features"
    run(["aif", "featurize", "--params", str(all_groups), "--output", str(out)], project)
    frame = load_periods(out, [protocol], everything)
    train, test = split_frame(frame, protocol)
    extra = [g for g in FEATURE_GROUPS if g != "baseline"]
    sets = {"baseline": ("baseline",), **{f"baseline + {g}": ("baseline", g) for g in extra},
            "all groups": FEATURE_GROUPS,
            f"default: {' + '.join(params.features.groups)}": params.features.groups,
            **{f"all but {g}": tuple(x for x in FEATURE_GROUPS if x != g) for g in extra}}
    results = {}
    for name, groups in sets.items():
        cols = feature_names(feature_specs(replace(params.features, groups=groups),
                                            params.label_delay_days))
        booster = fit_booster(train[cols].to_numpy(np.float64), train.tx_fraud.to_numpy(),
                              lgb_params, rounds)
        m = score_metrics(test, booster.predict(test[cols].to_numpy(np.float64)),
                          params.evaluate)
        results[name] = {k: round(m[k], 4) for k in HEADLINE}
    return results


def main() -> bool:
    per_seed, ablations, tune_walls = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in SEEDS:
            project, tune_wall = pipeline(Path(tmp), seed)
            tune_walls.append(tune_wall)
            per_seed[seed] = json.loads((project / "reports/metrics.json").read_text())
            tuning = json.loads((project / "reports/tuning.json").read_text())
            per_seed[seed]["tuning"] = {k: tuning[k] for k in
                                        ("best_value", "lightgbm_defaults_value", "n_trials")}
            ablations[seed] = ablation(project)
    figures = {}
    for who in ("model", "baseline"):
        for k in HEADLINE:
            values = [per_seed[s][who][k] for s in SEEDS]
            figures[f"{who}_{k}"] = {"seed_0": round(values[0], 4),
                                     "mean": round(statistics.mean(values), 4),
                                     "sd": round(statistics.stdev(values), 4),
                                     "per_seed": [round(v, 4) for v in values]}
    ablation_mean = {name: {k: round(statistics.mean(ablations[s][name][k] for s in SEEDS), 4)
                            for k in HEADLINE} for name in ablations[SEEDS[0]]}
    beats = all(t["best_value"] > t["lightgbm_defaults_value"]
                for t in (per_seed[s]["tuning"] for s in SEEDS))
    meets = {k: per_seed[0]["model"][k] >= t for k, t in TARGETS.items()}
    ok = all(meets.values()) and max(tune_walls) <= 120 and beats
    print("quality: default protocol (train 2018-07-25 + 7 days, delay 7, test 7 days)")
    report("quality", {**figures, "tune_wall_s": [round(w, 1) for w in tune_walls],
                       "tuning": {s: per_seed[s]["tuning"] for s in SEEDS},
                       "ablation_mean_over_seeds": ablation_mean,
                       "targets_seed_0": meets, "tuned_beats_defaults": beats,
                       "meets_target": ok})
    return ok


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
