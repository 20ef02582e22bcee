"""The pure decision rules, on hand-made figures: the gate's checks, promotion ordering and
rollback, the retraining plan, and the drift report's status. Milliseconds, no files."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aif.config.params import DriftThresholds, GateParams, MonitorParams, Params, from_dict
from aif.io import StageError
from aif.lifecycle.gate import gate_checks
from aif.lifecycle.promote import promotion_refusal, rollback_target
from aif.lifecycle.registry import Version
from aif.lifecycle.retrain import retrain_plan
from aif.monitor.status import (
    compared_features,
    drift_levels,
    first_alert_chunk,
    performance_levels,
    quality_levels,
    reasons,
    verdict,
)


def figures(ap: float, recall: float, frauds: int = 60, ece: float = 0.002,
            latency: float = 20.0) -> dict:
    return {"metrics": {"average_precision": ap, "expected_calibration_error": ece,
                        "latency_ms_per_10k": latency},
            "segments": [{"segmentation": "time", "segment": "night", "frauds": frauds,
                          "recall_at_budget": recall}]}


def failed(checks: list[dict]) -> list[str]:
    return [c["check"] for c in checks if not c["passed"]]


# --- the gate --------------------------------------------------------------------------------

def test_gate_passes_a_better_challenger_and_names_what_a_worse_one_fails():
    rules = GateParams()
    assert failed(gate_checks(figures(0.62, 0.5), figures(0.60, 0.5), rules)) == []
    assert failed(gate_checks(figures(0.59, 0.5), figures(0.60, 0.5), rules)) == [
        "average_precision"]
    assert failed(gate_checks(figures(0.61, 0.3), figures(0.60, 0.5), rules)) == [
        "segment_recall: time / night"]
    assert failed(gate_checks(figures(0.61, 0.5, ece=0.02), None, rules)) == [
        "calibration_error"]
    assert failed(gate_checks(figures(0.61, 0.5, latency=300), None, rules)) == [
        "latency_ms_per_10k"]


def test_gate_ignores_segments_with_too_few_frauds_to_judge():
    rules = GateParams(min_segment_frauds=50)
    assert failed(gate_checks(figures(0.61, 0.0, frauds=49), figures(0.60, 0.9), rules)) == []


def test_first_model_is_judged_by_its_guardrails_only():
    checks = gate_checks(figures(0.01, 0.0), None, GateParams())
    assert [c["check"] for c in checks] == ["calibration_error", "latency_ms_per_10k"]


@given(ap=st.floats(0, 1), recall=st.floats(0, 1), frauds=st.integers(0, 500))
def test_a_challenger_equal_to_its_champion_always_passes(ap, recall, frauds):
    same = figures(ap, recall, frauds)
    assert failed(gate_checks(same, same, GateParams())) == []


# --- promotion ordering and rollback ---------------------------------------------------------

def version(name: str, *stages: str) -> Version:
    return Version(name, "c" + name, "2026-01-01 00:00:00", stages, "")


def test_prod_only_moves_upwards():
    prod = version("v0.0.9", "prod")
    assert promotion_refusal(version("v0.0.10"), prod) is None   # by number, not as text
    assert "older than prod" in promotion_refusal(version("v0.0.8"), prod)
    assert "already in prod" in promotion_refusal(version("v0.0.9"), prod)
    assert promotion_refusal(version("v0.0.1"), None) is None


def test_rollback_returns_to_the_previous_prod_version():
    registered = [version("v0.0.1", "prod"), version("v0.0.2", "staging"),
                  version("v0.0.3", "prod")]
    current, target = rollback_target(registered)
    assert (current.name, target.name) == ("v0.0.3", "v0.0.1")
    with pytest.raises(StageError, match="first prod version"):
        rollback_target([version("v0.0.1", "prod")])
    with pytest.raises(StageError, match="nothing is in prod"):
        rollback_target([version("v0.0.1")])


# --- the retraining plan ---------------------------------------------------------------------

def test_retrain_plan_places_the_gate_window_before_labels_run_out():
    params = from_dict(Params, {"label_delay_days": 7, "split": {"train_days": 7,
                                                                 "test_days": 7}})
    assert retrain_plan("2018-10-01", params) == {
        "as_of": "2018-10-01", "labels_known_before": "2018-09-24",
        "gate_window": {"start": "2018-09-17", "days": 7}, "train_start": "2018-09-03"}
    with pytest.raises(StageError, match="not a date"):
        retrain_plan("next week", params)


@given(delay=st.integers(1, 30), train=st.integers(1, 30), test=st.integers(1, 30))
def test_retrain_plan_never_trains_or_gates_on_unknown_labels(delay, train, test):
    params = from_dict(Params, {"label_delay_days": delay,
                                "split": {"train_days": train, "test_days": test}})
    plan = retrain_plan("2018-10-01", params)
    gate_end = np.datetime64(plan["gate_window"]["start"]) + np.timedelta64(test, "D")
    train_end = np.datetime64(plan["train_start"]) + np.timedelta64(train, "D")
    assert gate_end == np.datetime64(plan["labels_known_before"])
    assert train_end + np.timedelta64(delay, "D") == np.datetime64(plan["gate_window"]["start"])


# --- the drift report's status ---------------------------------------------------------------

def test_both_effect_sizes_must_agree_before_a_feature_drifts():
    t = DriftThresholds()
    psi, wasserstein = np.array([0.30, 0.30, 0.05, 0.12]), np.array([0.25, 0.05, 0.30, 0.15])
    assert list(drift_levels(psi, wasserstein, t)) == [2, 0, 0, 1]
    moved = np.array([False, False, True, False])
    assert list(drift_levels(psi, wasserstein, t, moved)) == [2, 0, 2, 1]


def test_quality_warns_on_volume_unseen_terminals_and_broken_rules():
    rules = MonitorParams(volume_ratio_bounds=(0.5, 2.0), max_unseen_terminal_share=0.05)
    volume = np.array([1.0, 0.49, 2.01, 1.0, 0.5])
    unseen = np.array([0.0, 0.0, 0.0, 0.051, 0.05])
    assert list(quality_levels(volume, unseen, False, rules)) == [0, 1, 1, 1, 0]
    assert list(quality_levels(volume[:1], unseen[:1], True, rules)) == [1]


def test_performance_alerts_on_realised_and_warns_on_estimated_drops():
    labelled = np.array([True, True, False, False])
    below = np.array([True, False, True, False])
    assert list(performance_levels(labelled, below, below)) == [2, 0, 1, 0]


def test_calendar_features_are_not_compared():
    assert compared_features(["tx_amount", "tx_during_weekend", "tx_during_night"]) == [
        "tx_amount"]


@given(st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=5), min_size=1, max_size=4))
def test_status_is_the_worst_level_of_any_section(sections):
    status, action = verdict(*[np.array(s) for s in sections])
    worst = max(max(s) for s in sections)
    assert status == ("ok", "warn", "alert")[worst]
    assert action == {"ok": "none", "warn": "investigate", "alert": "retrain"}[status]


def test_reasons_and_onset_name_what_was_found():
    row = {"feature": "tx_amount", "level": "alert", "max_psi": 0.41, "max_wasserstein": 0.3,
           "chunks_mean_outside_band": 1, "chunks_alert": ["2018-09-02"]}
    found = reasons([row, {**row, "feature": "quiet", "level": "ok"}], np.array([2]), 0.33,
                    np.array([0]), ["2018-09-03 10:00:00"], np.array([1]))
    assert found == [
        "data drift: tx_amount (PSI 0.41, Wasserstein/sd 0.30, mean outside the band on 1 "
        "chunk(s)) on 1 chunk(s)", "prediction drift: score PSI up to 0.33",
        "concept drift: ADWIN fired 1 time(s), first at 2018-09-03 10:00:00",
        "data quality: volume or unseen terminals out of range"]
    assert first_alert_chunk(np.array([0, 1, 2, 2]), ["a", "b", "c", "d"]) == "c"
    assert first_alert_chunk(np.array([0, 1]), ["a", "b"]) is None


def test_a_category_feature_drifts_by_its_categories_not_by_its_keys():
    "PSI on categories and the Jensen-Shannon distance: a new category's share raises an alert."
    from aif.monitor.drift import categorical_drift, categorical_profile

    rng = np.random.default_rng(0)
    keys = np.array([2**62 + 7, 11, 2**40])     # category keys: their size means nothing
    reference = rng.choice(keys, 30_000, p=[0.5, 0.3, 0.2])
    same = rng.choice(keys, 10_000, p=[0.5, 0.3, 0.2])
    new = np.where(rng.random(10_000) < 0.3, 999, rng.choice(keys, 10_000, p=[0.5, 0.3, 0.2]))
    d = categorical_drift(categorical_profile(reference), np.concatenate([same, new]),
                          np.repeat([0, 1], 10_000), 2)
    t = DriftThresholds()
    levels = drift_levels(d["psi"], d["jensen_shannon"], t, statistic="jensen_shannon")
    assert list(levels) == [0, 2] and abs(d["unseen_share"][1] - 0.3) < 0.02


def test_a_feature_gone_missing_alerts_and_an_empty_chunk_judges_nothing():
    """A chunk of missing values only has no distance; its PSI, whose last bin is the missing
    values', judges it (it was "ok"). An empty chunk is no drift, numeric or categorical (an
    all-zero histogram gave Jensen-Shannon 0.71: an alert). A reference without values is a
    profile too (it stopped the report), against which values that appear are a drift."""
    from aif.monitor.drift import (
        categorical_drift,
        categorical_profile,
        numeric_drift,
        numeric_profile,
    )

    rng = np.random.default_rng(0)
    t = DriftThresholds()
    values = np.concatenate([rng.normal(size=1000), np.full(1000, np.nan)])
    d = numeric_drift(numeric_profile(rng.normal(size=5000)), values,
                      np.repeat([0, 1], 1000), 3)   # chunk 2 is empty
    assert np.isnan(d["wasserstein"][1]) and np.isnan(d["psi"][2])
    assert list(drift_levels(d["psi"], d["wasserstein"], t)) == [0, 2, 0]
    c = categorical_drift(categorical_profile(rng.choice([3, 5], 5000)),
                          rng.choice([3, 5], 1000), np.zeros(1000, np.int64), 2)
    assert list(drift_levels(c["psi"], c["jensen_shannon"], t, statistic="jensen_shannon")) \
        == [0, 0]
    empty_reference = numeric_profile(np.full(100, np.nan))
    d = numeric_drift(empty_reference, np.concatenate([np.full(500, np.nan),
                                                       rng.normal(size=500)]),
                      np.repeat([0, 1], 500), 2)
    assert list(drift_levels(d["psi"], d["wasserstein"], t)) == [0, 2]


def test_score_since_with_an_offset_is_the_data_s_local_time():
    "`aif score --since` with an offset raised a TypeError against the naive local times."
    import pandas as pd

    from aif.serve.batch import since_time

    assert since_time("2018-07-06T00:00:00+02:00", "Europe/Brussels") == pd.Timestamp(
        "2018-07-06 00:00")
    assert since_time("2018-07-06T00:00:00Z", "Europe/Brussels") == pd.Timestamp(
        "2018-07-06 02:00")
    assert since_time("2018-07-06", None) == pd.Timestamp("2018-07-06")
    for bad, timezone in (("2018-07-06T00:00+02:00", None), ("25:00", "UTC")):
        with pytest.raises(StageError, match="--since"):
            since_time(bad, timezone)


def test_a_model_reading_an_attribute_ingest_no_longer_declares_is_refused():
    "The service answered 500 (and `aif score` raised) for such a model; now one line at start."
    from aif.features.specs import check_declared, declared_specs

    specs = declared_specs(({"name": "categories_7d", "entity": "customer", "window_days": 7,
                             "aggregation": "distinct_count", "inputs": ["merchant_category"]},), 7)
    check_declared(specs, ["merchant_category"], "v0.0.1", "serve")
    with pytest.raises(StageError, match="model v0.0.1 reads attribute merchant_category"):
        check_declared(specs, ["customer_lat"], "v0.0.1", "serve")


def test_the_gate_line_says_when_the_models_read_other_features():
    "Each model is scored with its own features; the decision now says when those differ."
    from aif.lifecycle.gate import summary_line

    decision = {"challenger": {"metrics": {"average_precision": 0.52}, "features": ["a", "c"]},
                "champion": {"version": "v0.0.1", "metrics": {"average_precision": 0.53},
                             "features": ["a", "km"]},
                "checks": [{"check": "average_precision", "passed": False}], "promote": False,
                "window": {"start": "2018-07-31", "days": 7}}
    assert "(other features: 1 new: c; 1 dropped: km)" in summary_line(decision)
    decision["challenger"]["features"] = ["km", "a"]
    assert "other features" not in summary_line(decision)


def test_a_declared_feature_named_as_a_group_s_is_refused_in_one_line():
    "README's own example once declared the card's largest amount, since a default: a traceback."
    from aif.config.params import FeaturesParams, ParamsError
    from aif.features.specs import feature_specs

    twice = FeaturesParams(declared=({"name": "customer_max_amount_7d", "entity": "customer",
                                      "aggregation": "max", "window_days": 7},))
    with pytest.raises(ParamsError, match="two features named customer_max_amount_7d"):
        feature_specs(twice, 7)
    assert "customer_max_amount_7d" in {s.name for s in feature_specs(FeaturesParams(), 7)}


def test_split_windows_outside_the_data_are_refused_in_one_line():
    """An export of other dates than the defaults' 2018 ones: tune gave a TypeError when no
    fraud fell after split.train_start, and ran folds past the data's end."""
    from aif.config.params import SplitParams
    from aif.modelling import split
    from aif.modelling.split import check_history

    test = split.test_protocol(SplitParams(), 7)
    rows = pd.DataFrame({"tx_datetime": pd.to_datetime(["2018-05-01", "2018-08-09"]),
                         "customer_id": [1, 2], "tx_fraud": np.array([1, 0], np.int8)})
    assert split.known_compromised_mask(rows, test).tolist() == [False, False]
    protocols = [*split.prequential_folds(SplitParams(), 7, 4), test]
    check_history(protocols, np.datetime64("2018-01-01"), 37.0, np.datetime64("2018-08-14"))
    with pytest.raises(StageError, match="after the data's last day 2018-06-30: move "
                                         "split.train_start 45 days earlier"):
        check_history(protocols, np.datetime64("2018-01-01"), 37.0, np.datetime64("2018-06-30"))
    # 91 days: too few for any split.train_start with four tuning folds (moving it for the
    # history made the assessment run past the end, and the reverse), one line that says so
    with pytest.raises(StageError, match="the data's 91 days .* fewer than the split needs, 93"
                                         ".* use fewer tune.n_folds"):
        check_history(protocols, np.datetime64("2018-05-16"), 37.0, np.datetime64("2018-08-14"))


@pytest.mark.parametrize("reference_ones, current", [(0.05, 1.0), (0.0, 5.0)])
def test_a_shift_off_a_value_most_rows_hold_is_drift(reference_ones, current):
    """A count or a fraud rate that is 0 for most of the reference, or all of it: its deciles
    collapse onto 0. A current week of 60% `current` (ones, or fives) is an alert; it was PSI 0,
    "ok", since 0 and what lies above it shared a bin. The same week again is no drift."""
    from aif.monitor.drift import numeric_drift, numeric_profile

    rng = np.random.default_rng(1)
    reference = (rng.random(5000) < reference_ones) * 1.0
    week = np.concatenate([(rng.random(1000) < 0.6) * current, reference[:1000]])
    d = numeric_drift(numeric_profile(reference), week, np.repeat([0, 1], 1000), 2)
    levels = drift_levels(d["psi"], d["wasserstein"], DriftThresholds())
    assert list(levels) == [2, 0] and d["psi"][0] > DriftThresholds().psi[1]
