"""Features: the fast engine equals a plain per-entity loop; no feature sees the future or a
label before its delay; same input, same bytes."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aif.config.params import FEATURE_GROUPS, FeaturesParams, Params, ParamsError, params_from_text
from aif.features.engine import aggregate, compute_features, grouped_row_features
from aif.features.kernels import grouped_order
from aif.features.specs import FeatureSpec, check_specs, entity_key, feature_specs
from aif.features.store import read_features
from aif.keys import category_keys

DELAY = 7
DAY = 86_400 * 10**6
PARAMS = FeaturesParams(groups=FEATURE_GROUPS)   # every feature, not only the default set
SPECS = feature_specs(PARAMS, DELAY)


def reference_features(tx: pd.DataFrame, specs) -> dict[str, np.ndarray]:
    "The definitions, row by row: slow and obviously correct."
    t = tx.tx_datetime.to_numpy()
    ids, amount = tx.transaction_id.to_numpy(), tx.tx_amount.to_numpy()
    label = tx.tx_fraud.to_numpy()
    entity_of = {"customer": tx.customer_id.to_numpy(), "terminal": tx.terminal_id.to_numpy(),
                 "customer_terminal": list(zip(tx.customer_id, tx.terminal_id, strict=True))}
    if "channel" in tx:   # an attribute as an entity, and pairs with it: by its raw values
        entity_of.update({"channel": tx.channel.to_numpy(),
                          "customer+channel": list(zip(tx.customer_id, tx.channel, strict=True)),
                          "channel+terminal": list(zip(tx.channel, tx.terminal_id, strict=True))})
    out = {s.name: np.zeros(len(tx)) for s in specs}
    with np.errstate(divide="ignore", invalid="ignore"):  # amount / mean of zeros: inf or NaN
        _fill_reference(out, tx, specs, t, ids, amount, label, entity_of)
    return out


def _fill_reference(out, tx, specs, t, ids, amount, label, entity_of) -> None:
    for i in range(len(tx)):
        for s in specs:
            if s.derived:
                a, b = (out[n][i] if n in out else tx[n].iloc[i] for n in s.inputs)
                out[s.name][i] = a - b if s.aggregation == "difference" else (
                    a / b if b != 0 and not math.isnan(b) else np.nan)
                continue
            if s.entity == "transaction":
                day = math.floor(t[i] / DAY)
                if s.aggregation == "haversine":
                    out[s.name][i] = haversine(*(tx[c].iloc[i] for c in s.inputs))
                    continue
                value = tx[s.inputs[0]].iloc[i] if s.inputs else amount[i]
                out[s.name][i] = {"value": value, "weekend": (day + 3) % 7 >= 5,
                                  "night": (t[i] // (3600 * 10**6)) % 24 <= 6,
                                  "hour": (t[i] // (3600 * 10**6)) % 24,
                                  "weekday": (day + 3) % 7}[s.aggregation]
                continue
            ent = entity_of[s.entity]
            before = [j for j in range(len(tx)) if ent[j] == ent[i]
                      and (t[j], ids[j]) < (t[i], ids[i])]
            if s.aggregation == "seconds_since_previous":
                out[s.name][i] = (t[i] - t[before[-1]]) / 1e6 if before else np.nan
                continue
            if s.aggregation == "first_use":
                out[s.name][i] = 0 if before else 1
                continue
            w = s.window
            if w.lag == 0:
                window = before + ([i] if w.include_current else [])
                window = [j for j in window if w.length is None or t[j] > t[i] - w.length]
            else:
                window = [j for j in range(len(tx)) if ent[j] == ent[i]
                          and t[j] <= t[i] - w.lag
                          and (w.length is None or t[j] > t[i] - w.lag - w.length)]
            n = len(window)
            column = tx[s.column].to_numpy() if s.column else amount   # raw values
            values = [column[j] for j in window]
            if s.kind == "distinct_count":
                out[s.name][i] = len(set(values))
                continue
            values = [v for v in values if not math.isnan(v)]   # a missing value: left out
            if s.kind in ("min", "max"):
                out[s.name][i] = (min if s.kind == "min" else max)(values) if values else np.nan
                continue
            frauds = sum(label[j] for j in window)
            fraud_times = [t[j] for j in window if label[j] == 1]
            if s.aggregation in ("amount_to_genuine_mean", "genuine_mean_amount"):
                genuine = [amount[j] for j in window if label[j] == 0]
                usual = math.fsum(genuine) / len(genuine) if genuine else np.nan
                out[s.name][i] = usual if s.aggregation == "genuine_mean_amount" \
                    else amount[i] / usual
                continue
            if s.aggregation in ("days_since_first_fraud", "days_since_last_fraud"):
                pick = min if s.aggregation == "days_since_first_fraud" else max
                out[s.name][i] = (t[i] - pick(fraud_times)) / DAY if fraud_times else np.nan
                continue
            present = len(values)
            mean = math.fsum(values) / present if present else np.nan
            out[s.name][i] = {
                "count": n,
                "sum": math.fsum(values),
                "std": math.sqrt(math.fsum((a - mean) ** 2 for a in values) / present)
                if present else np.nan,
                "mean": mean,
                "to_mean": column[i] / mean if present else np.nan,
                "fraud_count": frauds,
                "fraud_rate": frauds / n if n else 0.0,
            }[s.kind]


def haversine(lat1, lon1, lat2, lon2) -> float:
    "Great-circle kilometres, as any textbook writes it (NaN without one of the four)."
    if any(math.isnan(v) for v in (lat1, lon1, lat2, lon2)):
        return np.nan
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lon2 - lon1))
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(min(1.0, a)))


def columns_of(tx: pd.DataFrame) -> dict:
    columns = {"transaction_id": tx.transaction_id.to_numpy(np.int64),
               "tx_datetime": tx.tx_datetime.to_numpy(np.int64),
               "customer_id": tx.customer_id.to_numpy(np.int64),
               "terminal_id": tx.terminal_id.to_numpy(np.int64),
               "tx_amount": tx.tx_amount.to_numpy(np.float64),
               "tx_fraud": tx.tx_fraud.to_numpy(np.int8)}
    if "channel" in tx:   # attributes as the engines take them (nbs/22: categories as keys)
        columns.update(channel=category_keys(tx.channel.to_numpy()),
                       **{c: tx[c].to_numpy(np.float64) for c in ("lat", "lon", "mlat", "mlon")})
    return columns


@st.composite
def transactions(draw, max_rows: int = 120) -> pd.DataFrame:
    n = draw(st.integers(1, max_rows))
    # Few distinct instants over ~60 days, so ties and window edges are common.
    instants = draw(st.lists(st.integers(0, 60 * 86_400), min_size=1, max_size=40))
    t = np.array(draw(st.lists(st.sampled_from(instants), min_size=n, max_size=n)), np.int64)
    t = t * 10**6 + 1_522_540_800 * 10**6   # seconds after 2018-04-01, in microseconds
    ids = np.array(draw(st.permutations(range(n))), np.int64) * 3 + 5
    frame = pd.DataFrame({
        "transaction_id": ids, "tx_datetime": t,
        "customer_id": draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
        "terminal_id": draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)),
        "tx_amount": draw(st.lists(st.one_of(st.sampled_from([0.0, 0.01, 12.5]),
                                             st.floats(0.01, 1e5)), min_size=n, max_size=n)),
        "tx_fraud": draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        "channel": draw(st.lists(st.sampled_from(["pos", "web", "moto"]), min_size=n, max_size=n)),
        # windows aggregate "lat": values of one sign, as latitudes in one region are, so a
        # mean is never the cancellation of large terms (whose relative error is unbounded in
        # any float sum, the reference's exact fsum aside)
        # and some are missing (a nullable attribute's nulls), which windows leave out
        "lat": draw(st.lists(st.one_of(st.floats(1, 80), st.just(np.nan)), min_size=n,
                             max_size=n)),
        **{c: draw(st.lists(st.floats(-80, 80), min_size=n, max_size=n))
           for c in ("lon", "mlat", "mlon")}})
    return frame.sort_values(["tx_datetime", "transaction_id"], ignore_index=True)


def assert_equal_features(fast: dict, slow: dict, specs, scale: float = 1.0) -> None:
    for s in specs:
        a, b = np.asarray(fast[s.name], float), np.asarray(slow[s.name], float)
        if s.kind in ("count", "fraud_count", "first_use", "weekend", "night", "hour",
                      "weekday", "distinct_count", "min", "max"):
            assert np.array_equal(a, b, equal_nan=True), s.name
        elif s.kind == "std":   # from window sums of x and x^2 (nbs/23)
            assert np.array_equal(np.isnan(a), np.isnan(b)), s.name
            ok = ~np.isnan(a)
            assert np.allclose(a[ok], b[ok], rtol=1e-6, atol=1e-6 * scale), s.name
        else:
            assert np.array_equal(np.isnan(a), np.isnan(b)), s.name
            ok = ~np.isnan(a)
            assert np.allclose(a[ok], b[ok], rtol=1e-9, atol=0), s.name


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), rows_per_partition=st.sampled_from([3, 17, 1_000_000]))
def test_fast_engine_equals_reference(tx, rows_per_partition):
    params = replace(PARAMS, rows_per_partition=rows_per_partition)
    fast = compute_features(columns_of(tx), SPECS, params)
    assert_equal_features(fast, reference_features(tx, SPECS), SPECS)


ENTITIES = ["customer", "terminal", "channel", ["customer", "channel"], ["channel", "terminal"]]
FREE = ["count", "mean_amount", "sum_amount", "std_amount", "amount_to_mean",
        "seconds_since_previous", "first_use"]
OF_COLUMN = ["sum", "mean", "std", "min", "max", "to_mean"]
LABELLED = ["fraud_count", "fraud_rate", "days_since_first_fraud", "days_since_last_fraud",
            "amount_to_genuine_mean", "genuine_mean_amount"]


@st.composite
def declarations(draw, kinds=("entity", "column", "labelled", "row", "derived")
                 ) -> tuple[dict, ...]:
    "Random features declared on the data: any entity, aggregation and window, rows, ratios."
    out = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(kinds))
        if kind == "column":   # a window over an attribute: a number, or a category's values
            agg = draw(st.sampled_from([*OF_COLUMN, "distinct_count"]))
            d = {"aggregation": agg, "inputs": ["channel"] if agg == "distinct_count" else
                 draw(st.sampled_from([["lat"], ["tx_amount"], []]))}
            d |= {"entity": draw(st.sampled_from(ENTITIES)),
                  "window_days": draw(st.sampled_from([0.25, 1, 3, 30])),
                  "lag_days": draw(st.sampled_from([0, 0, 2])),
                  "include_current": draw(st.booleans())}
        elif kind == "entity":
            d = {"entity": draw(st.sampled_from(ENTITIES)),
                 "aggregation": draw(st.sampled_from(FREE)),
                 "window_days": draw(st.sampled_from([0.25, 1, 3, 30])),
                 "include_current": draw(st.booleans())}
        elif kind == "labelled":
            d = {"entity": draw(st.sampled_from(["customer", "terminal"])),
                 "aggregation": draw(st.sampled_from(LABELLED)),
                 "window_days": draw(st.sampled_from([1, 7, 30])),
                 "lag_days": draw(st.sampled_from([DELAY, DELAY + 2]))}
        elif kind == "row" or not out:
            d = draw(st.sampled_from([{"aggregation": "hour"}, {"aggregation": "weekday"},
                                      {"aggregation": "value", "inputs": ["lat"]},
                                      {"aggregation": "haversine",
                                       "inputs": ["lat", "lon", "mlat", "mlon"]}]))
        else:
            d = {"aggregation": draw(st.sampled_from(["ratio", "difference"])),
                 "inputs": [draw(st.sampled_from([o["name"] for o in out] + ["tx_amount"])),
                            draw(st.sampled_from([o["name"] for o in out] + ["lat"]))]}
        out.append({"name": f"declared_{i}", **d})
    return tuple(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), declared=declarations(),
       rows_per_partition=st.sampled_from([3, 1_000_000]))
def test_declared_features_equal_the_reference(tx, declared, rows_per_partition):
    params = FeaturesParams(groups=("baseline",), declared=declared,
                            rows_per_partition=rows_per_partition)
    specs = feature_specs(params, DELAY)
    fast = compute_features(columns_of(tx), specs, params)
    assert_equal_features(fast, reference_features(tx, specs), specs,
                          scale=max(float(tx.tx_amount.max()), float(tx.lat.abs().max())))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), declared=declarations(kinds=("column",)),
       rows_per_partition=st.sampled_from([3, 1_000_000]))
def test_windows_over_columns_equal_the_reference(tx, declared, rows_per_partition):
    "Windows over an attribute (sum to max of a number, distinct values of a category)."
    test_declared_features_equal_the_reference.hypothesis.inner_test(
        tx, declared, rows_per_partition)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), base=st.sampled_from([2**31, 2**32, 2**48, 2**62]))
def test_features_do_not_depend_on_how_large_the_ids_are(tx, base):
    """Any int64 ids key the same way: card and terminal ids moved to the top of the range
    (past the old 2^31 cap and the 32-bit pair packing) give the same features, the pair
    features included."""
    params = replace(PARAMS, rows_per_partition=17)
    small = compute_features(columns_of(tx), SPECS, params)
    moved = columns_of(tx)
    moved["customer_id"] = moved["customer_id"] + base
    moved["terminal_id"] = (2**63 - 1) - moved["terminal_id"] * 3   # reversed and spread
    large = compute_features(moved, SPECS, params)
    assert_equal_features(small, large, SPECS)



@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), declared=declarations(kinds=("entity", "column", "labelled")),
       signed_zeros=st.lists(st.sampled_from([0.0, -0.0, -0.0, np.nan, -2.5]), min_size=120,
                             max_size=120), zero_amounts=st.booleans())
def test_one_row_takes_the_kernels_values_to_the_bit(tx, declared, signed_zeros, zero_amounts):
    """A request's single row (`aggregate_at_row`, a slice per window) gets the bytes the
    kernels give that row, for every row, every entity and random specs; with 0.0 and -0.0
    in one window, whose extreme depends on the order of comparisons, and missing values."""
    tx = tx.assign(lat=signed_zeros[:len(tx)])
    if zero_amounts:
        tx = tx.assign(tx_amount=np.where(tx.tx_fraud == 1, 0.0, tx.tx_amount))
    columns = columns_of(tx)
    extremes = tuple({"name": f"{entity}_{kind}_lat", "entity": entity, "aggregation": kind,
                      "inputs": ["lat"], "window_days": 30}
                     for entity in ("customer", "channel") for kind in ("min", "max"))
    specs = feature_specs(FeaturesParams(groups=FEATURE_GROUPS, declared=declared + extremes),
                          DELAY)
    by_entity = {}
    for spec in specs:
        if spec.windowed or spec.kind in ("seconds_since_previous", "first_use"):
            by_entity.setdefault(spec.entity, []).append(spec)
    for entity, entity_specs in by_entity.items():
        grouping = np.argsort(entity_key(columns, entity), kind="stable")  # rows in (time, id)
        key = entity_key(columns, entity)[grouping]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(key)) + 1, [len(key)]])
        time, label = columns["tx_datetime"][grouping], columns["tx_fraud"][grouping]
        grouped = {c: columns[c][grouping] for c in ("tx_amount", "lat", "channel")}
        kernels = aggregate(grouped_order(bounds, time), grouped, label, entity_specs,
                            np.arange(len(key)))
        for row in range(len(key)):
            one = grouped_row_features(bounds, time, grouped, label, entity_specs,
                                       np.array([row]))
            for name, values in one.items():
                assert values.dtype == kernels[name].dtype, name
                assert values.tobytes() == kernels[name][row:row + 1].tobytes(), (name, row)


def test_windows_on_a_worked_example():
    # One card: payments at day 0, 0 (tie, higher id), 5 and 40; a label delay of 7 days.
    tx = pd.DataFrame({"transaction_id": [1, 2, 3, 4], "customer_id": 0, "terminal_id": 9,
                       "tx_datetime": np.array([0, 0, 5, 40]) * DAY + 1_522_540_800 * 10**6,
                       "tx_amount": [10.0, 30.0, 20.0, 40.0], "tx_fraud": [1, 0, 0, 0]})
    f = compute_features(columns_of(tx), SPECS, PARAMS)
    assert list(f["customer_nb_tx_1d"]) == [1, 2, 1, 1]      # the tie sees only the row before it
    assert list(f["customer_avg_amount_7d"]) == [10, 20, 20, 40]
    assert list(f["terminal_nb_tx_30d"]) == [0, 0, 0, 1]     # (3d, 33d]: only day 5
    assert list(f["terminal_risk_30d"]) == [0, 0, 0, 0]
    assert list(f["terminal_nb_tx_7d"]) == [0, 0, 0, 0]      # (26d, 33d]: nothing
    assert list(f["customer_known_frauds"]) == [0, 0, 0, 1]  # day 0's fraud is known by day 33
    assert np.isnan(f["customer_amount_to_avg_30d"][0]) and f["customer_amount_to_avg_30d"][1] == 3
    assert list(f["customer_terminal_first_use"]) == [1, 0, 0, 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), cut=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_nothing_after_t_changes_features_at_or_before_t(tx, cut, seed):
    k = int(cut * (len(tx) - 1))        # rows 0..k are "at or before t"; later ones change
    rng = np.random.default_rng(seed)
    later = tx.copy()
    m = len(tx) - k - 1
    later.loc[k + 1:, "tx_amount"] = rng.uniform(0, 1e4, m)
    later.loc[k + 1:, "tx_fraud"] = rng.integers(0, 2, m)
    later.loc[k + 1:, "customer_id"] = rng.integers(0, 5, m)
    later.loc[k + 1:, "terminal_id"] = rng.integers(0, 6, m)
    a = compute_features(columns_of(tx), SPECS, PARAMS)
    b = compute_features(columns_of(later), SPECS, PARAMS)
    for name in a:
        assert np.array_equal(a[name][:k + 1], b[name][:k + 1], equal_nan=True), name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx=transactions(), cut=st.floats(0, 1))
def test_labels_younger_than_the_delay_are_never_read(tx, cut):
    t = tx.tx_datetime.to_numpy()
    now = t[int(cut * (len(tx) - 1))]
    flipped = tx.copy()
    recent = t > now - DELAY * DAY             # labels not yet known at `now`
    flipped.loc[recent, "tx_fraud"] = 1 - flipped.loc[recent, "tx_fraud"]
    a = compute_features(columns_of(tx), SPECS, PARAMS)
    b = compute_features(columns_of(flipped), SPECS, PARAMS)
    seen = t <= now
    for s in SPECS:
        if s.uses_labels:
            assert np.array_equal(a[s.name][seen], b[s.name][seen], equal_nan=True), s.name


def test_registry_refuses_a_label_feature_without_the_delay():
    leaky = FeatureSpec("terminal_risk_now", "baseline", "terminal", "fraud_rate", "leaks", 7, 0)
    with pytest.raises(ValueError, match="label_delay_days=7"):
        check_specs((leaky,), 7)
    assert all(s.lag_days >= DELAY for s in SPECS if s.uses_labels)
    assert "tx_fraud_scenario" not in {s.name for s in SPECS}



@pytest.mark.parametrize(("declared", "says"), [
    ({"window_days": 1, "lag_days": -0.5}, "lag_days must be 0 or more, not -0.5"),
    ({"window_days": 0}, "window_days must be above 0"),
    ({"window_days": -2}, "window_days must be above 0"),
    ({"window_days": float("nan")}, "window_days is a number of days"),
    ({"window_days": 1e300}, "window_days is a number of days up to 36,525"),
    ({"window_days": "7d"}, "window_days is a number of days"),
    ({"window_days": True}, "window_days is a number of days"),
    ({"window_days": 1, "lag_days": [1]}, "lag_days is a number of days"),
    ({"window_days": 1, "include_current": "false"}, "include_current is true or false"),
])
def test_a_window_that_is_no_span_of_the_past_is_refused_in_one_line(declared, says):
    "A negative lag would read transactions after the one scored; the rest would not run."
    spec = {"name": "card_count", "entity": "customer", "aggregation": "count", **declared}
    with pytest.raises(ParamsError, match=re.escape(says)) as refused:
        feature_specs(FeaturesParams(declared=(spec,)), DELAY)
    assert "features.declared[0]" in str(refused.value) and "\n" not in str(refused.value)


def test_windows_may_be_numpy_numbers_and_the_built_in_ones_are_checked_where_they_are_set():
    "A declaration built in Python may hold numpy's numbers; a group's window is a params key."
    spec = {"name": "card_count", "entity": "customer", "aggregation": "count"}
    made = feature_specs(FeaturesParams(declared=({**spec, "window_days": np.int64(7),
                                                   "lag_days": np.float32(1),
                                                   "include_current": np.bool_(False)},)), DELAY)
    assert (made[-1].window_days, made[-1].lag_days, made[-1].include_current) == (7, 1, False)
    for section, says in ((dict(customer_windows_days=(0, 7)), "customer_windows_days must be "
                           "above 0, not [0, 7]"),
                          (dict(velocity_window_hours=0.0), "velocity_window_hours must be "
                           "above 0, not 0.0")):
        with pytest.raises(ParamsError, match=re.escape(f"params.yaml: features.{says}")):
            FeaturesParams(**section)
    with pytest.raises(ParamsError, match="label_delay_days must be 0 or more, not -1"):
        Params(label_delay_days=-1)
    for text, says in (("velocity_window_hours: 1e999", "velocity_window_hours must be a number, "
                        "got '1e999'"),   # text to YAML 1.1 (no dot): it used to pass as text
                       ("velocity_window_hours: .nan", "velocity_window_hours must be a number"),
                       ("customer_windows_days: [1, '7']", "customer_windows_days[1] must be a "
                        "whole number, got '7'")):
        with pytest.raises(ParamsError, match=re.escape(f"params.yaml: features.{says}")):
            params_from_text(f"features:\n  {text}\n")

def test_groups_switch_features_off():
    baseline = feature_specs(FeaturesParams(groups=("baseline",)), DELAY)
    assert len(baseline) == 15 and {s.group for s in baseline} == {"baseline"}
    default = feature_specs(FeaturesParams(), DELAY)
    assert {s.group for s in default} == {"baseline", "amount_profile", "amount_peaks",
                                          "terminal_history"}
    assert len(SPECS) > len(default) > len(baseline)


def test_stage_writes_features_catalog_and_identical_bytes(small_project: Path):
    run(["dvc", "repro", "ingest"], small_project)
    run(["aif", "featurize"], small_project)
    out = small_project / "data/processed/features.parquet"
    first = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    run(["aif", "featurize"], small_project)
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == first

    features = read_features(out).to_pandas()
    interim = pd.read_parquet(small_project / "data/interim/transactions.parquet")
    assert list(features.transaction_id) == list(interim.transaction_id)   # same rows, same order
    assert list(features.columns[:6]) == ["transaction_id", "tx_datetime", "customer_id",
                                          "terminal_id", "tx_fraud", "tx_fraud_scenario"]
    catalog = json.loads((small_project / "reports/features.json").read_text())
    names = [f["name"] for f in catalog["features"]]
    default = feature_specs(FeaturesParams(), DELAY)
    assert names == [s.name for s in default] and names == list(features.columns[6:])
    risk = next(f for f in catalog["features"] if f["name"] == "terminal_risk_7d")
    assert risk["uses_labels"] and risk["label_delay_days"] == DELAY
    assert all(f["description"] and f["entity"] for f in catalog["features"])


def test_stage_refuses_unsorted_input(small_project: Path, tmp_path: Path):
    tx = pd.DataFrame({"transaction_id": [2, 1], "tx_datetime": pd.to_datetime(
        ["2018-04-02", "2018-04-01"]).astype("datetime64[us]"), "customer_id": [0, 0],
        "terminal_id": [0, 0], "tx_amount": [1.0, 2.0],
        "tx_fraud": pd.Series([0, 0], dtype="int8")})
    source = tmp_path / "unsorted.parquet"
    tx.to_parquet(source)
    result = run(["aif", "featurize", "--input", str(source)], small_project, check=False)
    assert result.returncode == 2 and "not sorted" in result.stderr
    assert "Traceback" not in result.stderr


def test_out_of_core_engine_writes_the_same_bytes(small_project: Path):
    from conftest import write_params
    run(["dvc", "repro", "ingest"], small_project)
    run(["aif", "featurize", "--output", str(small_project / "in_memory")], small_project)
    # Tiny partitions and a tiny memory limit force several spilled partitions per entity.
    write_params(small_project, features={"max_rows_in_memory": 100, "rows_per_partition": 4000})
    result = run(["aif", "featurize", "--output", str(small_project / "spilled")], small_project)
    assert "spill" in result.stderr
    in_memory = sorted((small_project / "in_memory").iterdir())
    spilled = sorted((small_project / "spilled").iterdir())
    assert [p.name for p in in_memory] == [p.name for p in spilled]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(in_memory, spilled, strict=True))
    assert not list(small_project.glob("data/processed/.featurize-*"))
