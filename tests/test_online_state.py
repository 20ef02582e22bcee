"""The online state's one event-time truth: transactions arriving late and out of order, up to
the allowed lateness, get exactly the features the offline engine computes on the rows that
had arrived by then; a batch that cannot be taken whole changes nothing. Pure, in memory."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aif.config.params import DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS, FeaturesParams
from aif.features.engine import compute_features
from aif.features.specs import MICROS_PER_DAY, feature_specs
from aif.serve.state import AlreadyScored, OnlineFeatures, out_of_time

HOUR = MICROS_PER_DAY // 24
SHORT = FeaturesParams(customer_windows_days=(1, 2), terminal_windows_days=(1, 2),
                       velocity_window_hours=3.0, rows_per_partition=10**6)


def stream(seed: int, n: int, days: float) -> dict:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, int(days * MICROS_PER_DAY), n)).astype(np.int64)
    return {"transaction_id": np.arange(n, dtype=np.int64) + 1, "tx_datetime": t,
            "customer_id": rng.integers(0, 6, n).astype(np.int64),
            "terminal_id": rng.integers(0, 8, n).astype(np.int64),
            "tx_amount": np.round(rng.gamma(2, 30, n), 2),
            "tx_fraud": (rng.random(n) < 0.15).astype(np.int8)}


def offline_at(columns: dict, arrived: list[int], row: int, specs, params) -> dict:
    "The offline engine's features of `row` on the rows that had arrived, in stream order."
    idx = np.array(sorted(arrived, key=lambda i: (columns["tx_datetime"][i],
                                                  columns["transaction_id"][i])))
    values = compute_features({c: v[idx] for c, v in columns.items()}, specs, params)
    at = int(np.flatnonzero(idx == row)[0])
    return {name: v[at] for name, v in values.items()}


def same(a, b) -> bool:
    a, b = float(a), float(b)
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9 * max(1.0, abs(b))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), lateness_hours=st.sampled_from([0, 3, 30]),
       groups=st.sampled_from([DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS]))
def test_late_arrivals_get_the_offline_features_of_what_had_arrived(seed, lateness_hours,
                                                                     groups):
    params = replace(SHORT, groups=groups)
    specs = feature_specs(params, 1)
    columns = stream(seed, 70, days=6)
    lateness = lateness_hours * HOUR
    delay = np.random.default_rng(seed + 1).integers(0, lateness + 1, 70)
    arrival = np.lexsort((columns["transaction_id"], columns["tx_datetime"] + delay))
    state = OnlineFeatures.empty(specs, lateness)
    arrived: list[int] = []
    for i in arrival.tolist():
        ahead, late = out_of_time(columns["tx_datetime"][i:i + 1], state.clock, lateness, 0)
        assert not late.any()            # the arrival order keeps within the lateness
        got = state.observe({c: v[i:i + 1] for c, v in columns.items()})
        arrived.append(i)
        expected = offline_at(columns, arrived, i, specs, params)
        for name, value in got.items():
            assert same(value[0], expected[name]), (name, i)


def test_a_batch_is_taken_whole_or_not_at_all():
    specs = feature_specs(SHORT, 1)
    columns = stream(3, 40, days=3)
    state = OnlineFeatures.empty(specs, HOUR)
    state.observe({c: v[:30] for c, v in columns.items()}, compute=False)
    before = {e: a.everything() for e, a in state.history.items()}
    clock, known = state.clock, dict(state.entities_of)
    batch = {c: v[25:35] for c, v in columns.items()}   # 25..29 were seen: 409, nothing kept
    with pytest.raises(AlreadyScored) as err:
        state.observe(batch)
    assert err.value.ids == [26, 27, 28, 29, 30]
    assert state.clock == clock and state.entities_of == known
    for entity, arena in state.history.items():
        assert all(np.array_equal(a, b) for a, b in zip(arena.everything(), before[entity],
                                                        strict=True))
    state.observe({c: v[30:35] for c, v in columns.items()})   # the new ones still go in


def test_the_clock_refuses_what_is_too_far_ahead_or_too_late():
    times = np.array([0, 5, 40, -20, -5]) * HOUR
    ahead, late = out_of_time(times, now=0, lateness=12 * HOUR, skew=24 * HOUR)
    assert ahead.tolist() == [False, False, True, False, False]
    assert late.tolist() == [False, False, False, True, False]
    # one transaction alone is judged from the clock
    assert out_of_time(np.array([30]) * HOUR, now=0, lateness=0, skew=24 * HOUR)[0].tolist() \
        == [True]
    # a batch may span days in steps under the skew, as a day's replay does
    days = np.arange(0, 72, 2) * HOUR
    assert not out_of_time(days, now=0, lateness=0, skew=24 * HOUR)[0].any()
    # an empty state has no clock yet: its first batch is judged by its own steps
    ahead, late = out_of_time(np.array([0, 1, 100]) * HOUR, now=None, lateness=0,
                              skew=24 * HOUR)
    assert ahead.tolist() == [False, False, True] and not late.any()


def test_old_rows_go_by_the_event_clock_and_each_key_keeps_its_last():
    specs = feature_specs(SHORT, 1)   # horizon: 2 + 1 days
    columns = stream(5, 400, days=20)
    state = OnlineFeatures.empty(specs, 12 * HOUR)
    for lo in range(0, 400, 40):
        state.observe({c: v[lo:lo + 40] for c, v in columns.items()}, compute=False)
    floor = state.clock - 12 * HOUR - state.horizon
    for arena in state.history.values():
        keys, rows = arena.everything()
        last = np.r_[keys[1:] != keys[:-1], True]
        assert ((rows["time"] > floor) | last).all()
    ids_kept = set(state.entities_of)
    assert min(ids_kept) > 1 and len(ids_kept) < 400   # ids are forgotten by event time too
