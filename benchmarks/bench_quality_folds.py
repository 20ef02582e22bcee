"""What moves model quality, measured on the tuning (validation) folds only, never on the test
weeks: candidate feature groups and declarations, a wider training window, bagging over
seeds, monotone constraints. Each variant is refitted with the tuned parameters of the
default model on each of the four validation folds (training starts 2018-06-20, 06-27,
07-04, 07-11; 7 days, 7 days of delay, 7 days assessed with the test-set rules) and scored
by AP and card precision@100; means over the folds and over simulator seeds 0-2.

`--variants combinations` tries the card's largest amount with its neighbours, `--variants
spread` robust references for the card's usual amount (z-scores, the largest before the
delay, the smallest), `--variants binning` LightGBM's histogram bins and the card's peak over
its usual genuine spend. `AIF_BENCH_QUALITY_DIR=dir` keeps the three projects between runs
(building one takes a few minutes); `--seeds 0` for one seed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml
from common import make_project, report, run, write_params

HEADLINE = ("average_precision", "card_precision_at_k")

# Declarations tried beside the default groups, in the language of `features.declared`.
CANDIDATES = {
    "terminal fraud shares at older lags": [
        {"name": "terminal_risk_7d_lag14", "entity": "terminal", "aggregation": "fraud_rate",
         "window_days": 7, "lag_days": 14},
        {"name": "terminal_risk_14d_lag21", "entity": "terminal", "aggregation": "fraud_rate",
         "window_days": 14, "lag_days": 21},
        {"name": "terminal_frauds_30d", "entity": "terminal", "aggregation": "fraud_count",
         "window_days": 30}],
    "time since the card's last known fraud": [
        {"name": "customer_days_since_last_fraud_60d", "entity": "customer",
         "aggregation": "days_since_last_fraud", "window_days": 60},
        {"name": "terminal_days_since_last_fraud_60d", "entity": "terminal",
         "aggregation": "days_since_last_fraud", "window_days": 60}],
    "amount against the card's history at this terminal": [
        {"name": "pair_nb_tx_30d", "entity": ["customer", "terminal"], "aggregation": "count",
         "window_days": 30},
        {"name": "pair_avg_amount_30d", "entity": ["customer", "terminal"],
         "aggregation": "mean_amount", "window_days": 30},
        {"name": "amount_to_pair_avg_30d", "aggregation": "ratio",
         "inputs": ["tx_amount", "pair_avg_amount_30d"]}],
    "card amount spread and peaks": [
        {"name": "customer_std_amount_30d", "entity": "customer", "aggregation": "std_amount",
         "window_days": 30},
        {"name": "customer_max_amount_7d", "entity": "customer", "aggregation": "max",
         "window_days": 7},
        {"name": "customer_amount_to_avg_7d", "entity": "customer",
         "aggregation": "amount_to_mean", "window_days": 7},
        {"name": "customer_amount_to_avg_1d", "entity": "customer",
         "aggregation": "amount_to_mean", "window_days": 1}],
    "card's older amount profile (before the delay)": [
        {"name": "customer_avg_amount_30d_lag7", "entity": "customer",
         "aggregation": "mean_amount", "window_days": 30, "lag_days": 7},
        {"name": "amount_to_customer_avg_lag7", "aggregation": "ratio",
         "inputs": ["tx_amount", "customer_avg_amount_30d_lag7"]}],
    "hour of day": [{"name": "tx_hour", "aggregation": "hour"}],
}
# The card-amount declarations one at a time, and neighbours of the ones that help.
CARD_AMOUNT = {
    "customer_std_amount_30d": {"entity": "customer", "aggregation": "std_amount",
                                "window_days": 30},
    "customer_max_amount_7d": {"entity": "customer", "aggregation": "max", "window_days": 7},
    "customer_amount_to_avg_7d": {"entity": "customer", "aggregation": "amount_to_mean",
                                  "window_days": 7},
    "customer_amount_to_avg_1d": {"entity": "customer", "aggregation": "amount_to_mean",
                                  "window_days": 1},
    "customer_amount_to_avg_3d": {"entity": "customer", "aggregation": "amount_to_mean",
                                  "window_days": 3},
    "customer_max_amount_1d": {"entity": "customer", "aggregation": "max", "window_days": 1},
    "customer_max_amount_30d": {"entity": "customer", "aggregation": "max", "window_days": 30},
    "customer_min_amount_7d": {"entity": "customer", "aggregation": "min", "window_days": 7},
    "customer_std_amount_7d": {"entity": "customer", "aggregation": "std_amount",
                               "window_days": 7},
}
CANDIDATES.update({f"card amount: {name}": [{"name": name, **d}]
                   for name, d in CARD_AMOUNT.items()})
CANDIDATES["card amount: amount_to_max_7d"] = [
    {"name": "customer_amount_to_max_7d", "aggregation": "ratio",
     "inputs": ["tx_amount", "customer_max_amount_7d"]}]


def card_amount(*names: str) -> list[dict]:
    "The card-amount declarations `names`, with the ratio's inputs before it."
    found = {n: {"name": n, **CARD_AMOUNT[n]} for n in names if n in CARD_AMOUNT}
    if "customer_amount_to_max_7d" in names:
        found.setdefault("customer_max_amount_7d", {"name": "customer_max_amount_7d",
                                                    **CARD_AMOUNT["customer_max_amount_7d"]})
        found["customer_amount_to_max_7d"] = CANDIDATES["card amount: amount_to_max_7d"][0]
    return list(found.values())


def combinations(params) -> dict[str, dict]:
    "The card's largest amount over 7 days with its neighbours, windows and bagging."
    default = params.features.groups
    combos = {"max 7d": ("customer_max_amount_7d",),
              "max 7d + amount / max 7d": ("customer_amount_to_max_7d",),
              "max 7d + max 30d": ("customer_max_amount_7d", "customer_max_amount_30d"),
              "max 7d + std 7d": ("customer_max_amount_7d", "customer_std_amount_7d"),
              "max 7d + max 1d": ("customer_max_amount_7d", "customer_max_amount_1d"),
              "max 7d, 1d, 30d + std 7d": ("customer_max_amount_7d", "customer_max_amount_1d",
                                          "customer_max_amount_30d",
                                          "customer_std_amount_7d")}
    found = {"default": {"columns": columns(params, default)}}
    for name, names in combos.items():
        found[f"+ {name}"] = {"columns": columns(params, default, card_amount(*names))}
    best = columns(params, default, card_amount("customer_max_amount_7d"))
    found["+ max 7d, bagging over 5 seeds"] = {"columns": best, "bag": 5}
    for days in (14, 28):
        found[f"+ max 7d, training window {days} days"] = {"columns": best, "train_days": days}
    return found


def z_score(days: int) -> list[dict]:
    "This amount's distance from the card's mean over `days`, in the card's own sd."
    return [{"name": f"customer_std_amount_{days}d", "entity": "customer",
             "aggregation": "std_amount", "window_days": days},
            {"name": f"amount_minus_customer_avg_{days}d", "aggregation": "difference",
             "inputs": ["tx_amount", f"customer_avg_amount_{days}d"]},
            {"name": f"customer_amount_z_{days}d", "aggregation": "ratio",
             "inputs": [f"amount_minus_customer_avg_{days}d", f"customer_std_amount_{days}d"]}]


# robust references for a card's usual amount: its spread, its smallest, and its largest
# before the label delay (which a thief's x5 payments of the last week do not inflate)
SPREAD = {
    "amount z-score over 30 days": z_score(30),
    "amount z-score over 7 days": z_score(7),
    "amount over the card's largest of 30 days ending 7 days ago": [
        {"name": "customer_max_amount_30d_lag7", "entity": "customer", "aggregation": "max",
         "window_days": 30, "lag_days": 7},
        {"name": "amount_to_customer_max_30d_lag7", "aggregation": "ratio",
         "inputs": ["tx_amount", "customer_max_amount_30d_lag7"]}],
    "amount over the card's smallest of 7 days": [
        {"name": "customer_min_amount_7d", "entity": "customer", "aggregation": "min",
         "window_days": 7},
        {"name": "amount_to_customer_min_7d", "aggregation": "ratio",
         "inputs": ["tx_amount", "customer_min_amount_7d"]}],
}
CANDIDATES.update({f"spread: {name}": declared for name, declared in SPREAD.items()})


def spread(params) -> dict[str, dict]:
    "The default features with each robust reference for the card's usual amount, and all."
    default = params.features.groups
    found = {"default": {"columns": columns(params, default)}}
    for name, declared in SPREAD.items():
        found[f"+ {name}"] = {"columns": columns(params, default, declared)}
    every = list({d["name"]: d for ds in SPREAD.values() for d in ds}.values())
    found["+ all of them"] = {"columns": columns(params, default, every)}
    return found


def binning(params) -> dict[str, dict]:
    """The default features with LightGBM's default 255 bins, today's 1023 and 4095; and
    without the card's peak against its usual genuine spend (amount_peaks' newer two)."""
    from aif.features.specs import feature_specs

    default = columns(params, params.features.groups)
    newer = {s.name for s in feature_specs(params.features, params.label_delay_days)
             if s.group == "amount_peaks" and s.aggregation != "max"}
    return {"default (1023 bins)": {"columns": default},
            "255 bins (LightGBM's default)": {"columns": default, "lgb": {"max_bin": 255}},
            "4095 bins": {"columns": default, "lgb": {"max_bin": 4095}},
            "without the peak over the usual genuine spend":
                {"columns": [c for c in default if c not in newer]},
            "without it, 255 bins (the features and bins before)":
                {"columns": [c for c in default if c not in newer], "lgb": {"max_bin": 255}}}


def build(root: Path, seed: int) -> Path:
    "A project on simulator seed `seed`, featurized and tuned (reused when it exists)."
    project = root / f"seed-{seed}"
    if (project / "models/best_params.json").exists():
        return project
    make_project(project)
    write_params(project, simulate={"seed": seed})
    run(["dvc", "repro", "tune"], project, WANDB_MODE="disabled")
    return project


def candidate_features(project: Path) -> Path:
    "Every group and every candidate declaration, featurized beside the pipeline's features."
    from aif.config.params import FEATURE_GROUPS, load_params

    made = set(columns(load_params(project / "params.yaml"), FEATURE_GROUPS))
    declared = [d for d in all_candidates() if d["name"] not in made]
    digest = hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()[:12]
    out = project / f"candidate_features-{digest}"
    if out.exists():
        return out
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["features"]["groups"] = list(FEATURE_GROUPS)
    params["features"]["declared"] = declared
    path = project / "candidate_params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    run(["aif", "featurize", "--params", str(path), "--output", str(out)], project)
    return out


def all_candidates() -> list[dict]:
    "Every candidate declaration once, in order."
    return list({d["name"]: d for ds in CANDIDATES.values() for d in ds}.values())


def columns(params, groups, declared=()) -> list[str]:
    """The feature columns of `groups` and `declared`; a declaration a group already makes
    (the card's largest amount over 7 days is now `amount_peaks`) is the group's."""
    from aif.features.specs import feature_names, feature_specs

    def names(declared: tuple) -> list[str]:
        return feature_names(feature_specs(replace(params.features, groups=tuple(groups),
                                                   declared=declared),
                                           params.label_delay_days))

    made = set(names(()))
    return names(tuple(d for d in declared if d["name"] not in made))


def variants(params) -> dict[str, dict]:
    "name: the feature columns, LightGBM overrides, bagged seeds, training days."
    from aif.config.params import FEATURE_GROUPS

    default = params.features.groups
    found = {"default": {"columns": columns(params, default)}}
    for group in FEATURE_GROUPS:
        if group not in default:
            found[f"+ group {group}"] = {"columns": columns(params, (*default, group))}
    for name, declared in CANDIDATES.items():
        found[f"+ {name}"] = {"columns": columns(params, default, declared)}
    found["+ all candidate declarations"] = {"columns": columns(params, default,
                                                                all_candidates())}
    found["bagging over 5 seeds"] = {"columns": columns(params, default), "bag": 5}
    for days in (14, 21, 28):
        found[f"training window {days} days"] = {"columns": columns(params, default),
                                                 "train_days": days}
    return found


def monotone(names: list[str]) -> list[int]:
    "Constraints where the direction is known: more known fraud, more risk."
    up = ("risk", "known_frauds", "amount_to", "tx_amount")
    return [1 if any(u in n for u in up) else 0 for n in names]


def fold_scores(project: Path, which: str) -> dict[str, dict]:
    os.chdir(project)
    from aif.config.params import load_params
    from aif.metrics import score_metrics
    from aif.modelling.model import fit_booster
    from aif.modelling.split import Period, load_periods, prequential_folds, split_frame
    from aif.modelling.train import training_params

    params = load_params(project / "params.yaml")
    best = json.loads((project / "models/best_params.json").read_text())
    lgb_params, rounds = training_params(best, params)
    out = candidate_features(project)
    if which == "combinations":
        found = combinations(params)
    elif which == "spread":
        found = spread(params)
    elif which == "binning":
        found = binning(params)
    else:
        found = variants(params)
        found["monotone constraints"] = {**found["default"], "monotone": True}
    every = sorted({c for v in found.values() for c in v["columns"]})
    default_folds = prequential_folds(params.split, params.label_delay_days, params.tune.n_folds)

    def widened(days: int) -> list:
        "The default folds, their training windows `days` long (the assessment weeks stay)."
        return [replace(f, train=Period(f.train.end - np.timedelta64(days, "D"), days))
                for f in default_folds]

    # read once, spanning the widest window any variant trains on
    widest = max(v.get("train_days", params.split.train_days) for v in found.values())
    frame = load_periods(out, widened(widest), every)
    results = {}
    for name, variant in found.items():
        folds = widened(variant.get("train_days", params.split.train_days))
        cols, per_fold = variant["columns"], []
        fit = {**lgb_params, **variant.get("lgb", {})}
        if variant.get("monotone"):
            fit["monotone_constraints"] = monotone(cols)
        for fold, same in zip(folds, default_folds, strict=True):
            # the assessment rows of the 7-day protocol whatever the window: a wider one
            # knows more compromised cards and would assess fewer frauds
            train, _ = split_frame(frame, fold)
            _, assess = split_frame(frame, same)
            X, y = train[cols].to_numpy(np.float64), train.tx_fraud.to_numpy()
            score = np.mean([fit_booster(X, y, {**fit, "seed": params.seed + b}, rounds)
                             .predict(assess[cols].to_numpy(np.float64))
                             for b in range(variant.get("bag", 1))], axis=0)
            m = score_metrics(assess, score, params.evaluate)
            per_fold.append({k: m[k] for k in HEADLINE})
        results[name] = {k: statistics.mean(f[k] for f in per_fold) for k in HEADLINE}
        print(f"  {name:<55} AP {results[name]['average_precision']:.4f}  "
              f"CP@100 {results[name]['card_precision_at_k']:.4f}", flush=True)
    return results


def main() -> bool:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--variants", choices=["ablation", "combinations", "spread", "binning"],
                        default="ablation")
    args = parser.parse_args()
    seeds = args.seeds
    keep = os.environ.get("AIF_BENCH_QUALITY_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep or tmp)
        per_seed = {}
        for seed in seeds:
            print(f"seed {seed}", flush=True)
            per_seed[seed] = fold_scores(build(root, seed), args.variants)
    names = list(per_seed[seeds[0]])
    table = {name: {k: {"mean": round(statistics.mean(per_seed[s][name][k] for s in seeds), 4),
                        "per_seed": [round(per_seed[s][name][k], 4) for s in seeds]}
                    for k in HEADLINE} for name in names}
    report(f"quality_folds_{args.variants}", {
        "protocol": "validation folds (tuning), training 7 days unless said, tuned parameters "
                    "of the default model", "seeds": seeds, "variants": table})
    return True


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
