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
from aif.keys import category_keys
from aif.serve.state import (
    HISTORY,
    KNOWN,
    AlreadyScored,
    Arena,
    KnownIds,
    LabelChangeRefused,
    Merged,
    OnlineFeatures,
    out_of_time,
)

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
            "tx_fraud": (rng.random(n) < 0.15).astype(np.int8),
            # attributes as the engines hold them: a category as its key, numbers as floats
            "channel": category_keys(rng.choice(["pos", "web", "moto"], n)),
            "lat": rng.uniform(50, 51, n), "lon": rng.uniform(4, 5, n)}


# features declared on attributes (nbs/20_feature_specs): an attribute as an entity, a pair,
# sums and spreads, row features and a ratio of two of them
DECLARED = (
    {"name": "channel_nb_tx_1d", "entity": "channel", "aggregation": "count", "window_days": 1},
    {"name": "card_channel_avg_2d", "entity": ["customer", "channel"],
     "aggregation": "mean_amount", "window_days": 2},
    {"name": "card_std_2d", "entity": "customer", "aggregation": "std_amount", "window_days": 2},
    {"name": "terminal_sum_1d", "entity": "terminal", "aggregation": "sum_amount",
     "window_days": 1, "include_current": False},
    {"name": "channel_since_prev", "entity": "channel", "aggregation": "seconds_since_previous"},
    {"name": "km_to_brussels", "aggregation": "haversine", "inputs": ["lat", "lon", "lat", "lon"]},
    {"name": "hour", "aggregation": "hour"},
    {"name": "to_card_channel_avg", "aggregation": "ratio",
     "inputs": ["tx_amount", "card_channel_avg_2d"]},
    # windows over attributes: the history keeps the columns they read
    {"name": "card_max_lat_2d", "entity": "customer", "aggregation": "max", "inputs": ["lat"],
     "window_days": 2},
    {"name": "card_min_amount_1d_lagged", "entity": "customer", "aggregation": "min",
     "window_days": 1, "lag_days": 0.25},
    {"name": "terminal_channels_1d", "entity": "terminal", "aggregation": "distinct_count",
     "inputs": ["channel"], "window_days": 1},
    {"name": "channel_lon_to_mean_2d", "entity": "channel", "aggregation": "to_mean",
     "inputs": ["lon"], "window_days": 2, "include_current": False})


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
       groups=st.sampled_from([DEFAULT_FEATURE_GROUPS, FEATURE_GROUPS]),
       declared=st.sampled_from([(), DECLARED]))
def test_late_arrivals_get_the_offline_features_of_what_had_arrived(seed, lateness_hours,
                                                                     groups, declared):
    params = replace(SHORT, groups=groups, declared=declared)
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
    clock, known = state.clock, state.known.everything().copy()
    batch = {c: v[25:35] for c, v in columns.items()}   # 25..29 were seen: 409, nothing kept
    with pytest.raises(AlreadyScored) as err:
        state.observe(batch)
    assert err.value.ids == [26, 27, 28, 29, 30]
    assert state.clock == clock and np.array_equal(state.known.everything(), known)
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
    ids_kept = set(state.known.everything()["id"].tolist())
    assert min(ids_kept) > 1 and len(ids_kept) < 400   # ids are forgotten by event time too



@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.integers(0, 50), min_size=1, max_size=30), since=st.integers(-1, 51),
       other_keys=st.booleans())
def test_a_key_keeps_its_rows_after_since_and_its_last(times, since, other_keys):
    """What a batch keeps of each key's merged history: the rows later than `since`, and the
    last row whatever its time. One key alone (a single transaction's request) takes a
    shorter way to it; a second key beside it takes the batch's."""
    n = len(times)
    rows = np.zeros(n, HISTORY)
    rows["time"], rows["id"] = sorted(times), np.arange(n)
    bounds, keys = np.array([0, n]), np.array([7])
    if other_keys:   # the same rows again, as a second key's
        rows, bounds, keys = np.concatenate([rows, rows]), np.array([0, n, 2 * n]), np.array([7, 9])
    store = Arena.empty(HISTORY)
    merged = Merged(rows, np.full(len(rows), -1), bounds, keys)
    OnlineFeatures.empty(())._keep(store, merged, since)
    expected = rows[:n][(rows["time"][:n] > since) | (np.arange(n) == n - 1)]
    for key in keys:
        length, kept = store.get(np.array([key]))
        assert kept.tobytes() == expected.tobytes()

@settings(max_examples=50, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 300), min_size=0, max_size=40, unique=True),
                        min_size=1, max_size=40),
       horizon=st.integers(1, 400))
def test_known_ids_answer_as_a_dictionary_and_forget_only_what_the_clock_left(batches, horizon):
    """The sorted runs find every id a dictionary would, with its card and terminal, and drop
    an id only once its time is behind the clock by more than the horizon.

    Forgetting happens when runs merge, so the runs may hold ids the clock has left until
    enough new ones arrive; but every run held only live ids when it was made (a batch, or a
    merge that dropped the rest), and each is more than twice the next newer one: they never
    hold more than twice the most ids that were ever live at once."""
    known, model, clock, seen, peak_live = KnownIds(), {}, 0, set(), 0
    for b, ids in enumerate(batches):
        ids = [i for i in ids if i not in seen]   # the state adds each id once
        seen.update(ids)
        times = np.full(len(ids), b * 10, np.int64)
        rows = {"transaction_id": np.array(ids, np.int64), "customer_id": np.array(ids) % 7,
                "terminal_id": np.array(ids) % 11, "tx_datetime": times}
        clock = b * 10
        known.add(rows, labelled=False, kept_since=clock - horizon)
        model.update({i: (i % 7, i % 11, b * 10) for i in ids})
        peak_live = max(peak_live, sum(1 for v in model.values() if v[2] >= clock - horizon))
    probe = np.arange(0, 301)
    run_of, at = known.find(probe)
    for i, r in zip(probe.tolist(), run_of.tolist(), strict=True):
        if i not in model:
            assert r < 0
        elif model[i][2] >= clock - horizon:      # within the horizon: always known
            assert r >= 0
    hit = run_of >= 0
    records = known.records(run_of[hit], at[hit])
    for i, c, t in zip(probe[hit].tolist(), records["customer"].tolist(),
                       records["terminal"].tolist(), strict=True):
        assert (c, t) == model[i][:2]
    assert len(known) <= 2 * peak_live


def test_a_recorded_label_changes_only_when_allowed_and_a_refusal_changes_nothing():
    specs = feature_specs(SHORT, 1)
    columns = stream(8, 30, days=2)
    state = OnlineFeatures.empty(specs, HOUR)
    unlabelled = {c: v for c, v in columns.items() if c != "tx_fraud"}
    state.observe(unlabelled, compute=False)
    ids = columns["transaction_id"][:3]
    first = state.record_labels(ids, [1, 0, 1], may_change=False)   # new labels: fine
    assert first["known"].all() and first["previous"].tolist() == [-1, -1, -1]
    before = {e: a.everything() for e, a in state.history.items()}
    with pytest.raises(LabelChangeRefused) as err:
        state.record_labels(ids, [1, 1, 1], may_change=False)   # the second would change
    assert err.value.ids == [int(ids[1])]
    for entity, arena in state.history.items():
        assert np.array_equal(arena.everything()[1], before[entity][1])
    assert state.label_states(ids)[1].tolist() == [1, 0, 1]
    again = state.record_labels(ids, [1, 1, 1], may_change=True)
    assert again["previous"].tolist() == [1, 0, 1]
    assert state.label_states(ids)[1].tolist() == [1, 1, 1]
    _, rows = state.history["customer"].everything()
    assert rows["label"][np.isin(rows["id"], ids)].tolist() == [1, 1, 1]
    unknown = state.record_labels(np.array([10**6]), np.array([1]))
    assert not unknown["known"][0]


def test_a_large_batch_worked_on_threads_gives_the_features_and_state_of_one_thread(
        monkeypatch):
    import aif.serve.state as online
    params = replace(SHORT, groups=FEATURE_GROUPS, declared=DECLARED)
    specs = feature_specs(params, 1)
    columns = stream(11, 3 * online.THREADED_ROWS, days=6)
    thirds = [{c: v[lo:lo + online.THREADED_ROWS] for c, v in columns.items()}
              for lo in range(0, 3 * online.THREADED_ROWS, online.THREADED_ROWS)]
    pooled, pool = [], online.ThreadPoolExecutor(4)
    monkeypatch.setattr(online, "entity_threads", lambda: pooled.append(1) or pool)
    threaded, single = OnlineFeatures.empty(specs, HOUR), OnlineFeatures.empty(specs, HOUR)
    with_threads = [threaded.observe(batch) for batch in thirds]
    assert len(pooled) == 6                   # prepare and commit of each batch
    monkeypatch.setattr(online, "THREADED_ROWS", 10**9)
    one_thread = [single.observe(batch) for batch in thirds]
    assert len(pooled) == 6
    for got, expected in zip(with_threads, one_thread, strict=True):
        assert got.keys() == expected.keys()
        for name in got:
            assert np.array_equal(got[name], expected[name], equal_nan=True), name
    for entity, arena in threaded.history.items():
        assert all(np.array_equal(a, b) for a, b in zip(
            arena.everything(), single.history[entity].everything(), strict=True)), entity
    assert np.array_equal(threaded.known.everything(), single.known.everything())
    pool.shutdown()


def test_a_snapshot_kept_for_other_features_is_refused_and_its_labels_are_carried_over(tmp_path):
    """A snapshot holds the rows its own features needed: one taken for shorter windows (or
    a smaller lateness) lacks rows longer ones read, so a state for other features refuses it
    (and is rebuilt from the data) instead of loading it with a silently short history; the
    labels it holds (received online, maybe no longer in the journal) are carried over."""
    from aif.serve.app import carry_labels, snapshot_labels

    columns = stream(9, 60, days=4)
    unlabelled = {c: v for c, v in columns.items() if c != "tx_fraud"}
    short, long = feature_specs(SHORT, 1), feature_specs(FeaturesParams(), 7)
    live = OnlineFeatures.empty(short, HOUR)
    live.observe(unlabelled, compute=False)
    ids = columns["transaction_id"][[2, 40]]
    live.record_labels(ids, [1, 0])
    path = tmp_path / "state.parquet"
    live.save(path)
    for specs, lateness in ((short, HOUR), (long, HOUR), (short, 2 * HOUR)):
        restarted = OnlineFeatures.empty(specs, lateness)
        if (specs, lateness) == (short, HOUR):
            restarted.load(path)   # its own layout: taken as it is
            assert restarted.label_states(ids)[1].tolist() == [1, 0]
            continue
        with pytest.raises(ValueError, match="other features"):
            restarted.load(path)
        restarted = OnlineFeatures.empty(specs, lateness)
        restarted.observe(unlabelled, compute=False)   # the rebuild from the data
        assert restarted.label_states(ids)[1].tolist() == [-1, -1]
        assert carry_labels(restarted, *snapshot_labels(path)) == 2
        assert restarted.label_states(ids)[1].tolist() == [1, 0]


def test_a_state_built_from_the_data_takes_the_acknowledged_labels_not_a_stale_copy(tmp_path):
    """The labels a state built from the data takes over (at a start after a re-ingest, or
    for a new model): with a label audit, the last label acknowledged for each transaction, a
    line cut short by a crash left out; without one, the copy's, only where the data has none
    when the data changed since the copy's state began (its labels are the old data's too)."""
    import json

    from aif.config.params import ServeParams
    from aif.config.paths import ProjectPaths
    from aif.serve.app import labels_to_carry

    paths = ProjectPaths(tmp_path)
    copy = (np.zeros(2, KNOWN), 7)
    for changed in (False, True):
        no_audit = labels_to_carry(paths, ServeParams(label_audit=None), lambda: copy, changed)
        assert no_audit == (*copy, changed)
    audit = tmp_path / "audit.jsonl"
    lines = [{"transaction_id": 5, "from": None, "to": 1}, {"transaction_id": 6, "from": None,
             "to": 0}, {"transaction_id": 5, "from": 1, "to": 0}]
    audit.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"transaction_id": 6')
    known, after, fill_only = labels_to_carry(paths, ServeParams(label_audit=str(audit)),
                                              lambda: copy, True)
    assert (after, fill_only) == (0, False)
    labels = ((known["stamp"] & 3) - 1).tolist()
    assert dict(zip(known["id"].tolist(), labels, strict=True)) == {5: 0, 6: 0}
