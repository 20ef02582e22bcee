"""The simulator: the handbook's design on the defaults, exact behaviour on small configs,
drift scenarios, and byte-identical reruns."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import REPO, SMALL_SIMULATION, run

from aif.config.params import (
    ActivitySurge,
    CardTesting,
    DriftScenarios,
    SimulateParams,
    SpendShift,
    load_params,
)
from aif.data.simulate import (
    compromised_terminal_days,
    generate_customers,
    generate_terminal_locations,
    simulate_transactions,
    terminals_in_reach,
)
from aif.schema import CANONICAL_COLUMNS

SMALL = SimulateParams(**SMALL_SIMULATION)


@pytest.fixture(scope="module")
def default_stream() -> dict:
    return simulate_transactions(load_params(REPO / "params.yaml").simulate)


@pytest.fixture(scope="module")
def small_stream() -> dict:
    return simulate_transactions(SMALL)


def test_defaults_match_the_handbook_scale(default_stream):
    n = len(default_stream["day"])
    per_day = n / 183
    fraud_rate = default_stream["tx_fraud"].mean()
    assert 1_650_000 <= n <= 1_850_000
    assert 9_000 <= per_day <= 10_100
    assert 0.007 <= fraud_rate <= 0.010
    assert set(np.unique(default_stream["tx_fraud_scenario"])) == {0, 1, 2, 3}


def test_customers_reach_about_75_terminals_on_defaults():
    params = load_params(REPO / "params.yaml").simulate
    reach = terminals_in_reach(generate_customers(params.n_customers, params.seed),
                               generate_terminal_locations(params.n_terminals, params.seed),
                               params.radius)
    assert 65 <= reach.counts.mean() <= 85


def test_payments_use_only_terminals_in_reach(small_stream):
    customers = generate_customers(SMALL.n_customers, SMALL.seed)
    terminals = generate_terminal_locations(SMALL.n_terminals, SMALL.seed)
    c, t = small_stream["customer_id"], small_stream["terminal_id"]
    distance = np.hypot(customers.x[c] - terminals[t, 0], customers.y[c] - terminals[t, 1])
    assert (distance < SMALL.radius).all()


def test_times_amounts_and_ids(small_stream):
    tx = small_stream
    seconds = (tx["tx_datetime"] - tx["tx_datetime"].astype("datetime64[D]")).astype(np.int64)
    assert ((seconds > 0) & (seconds < 86_400 * 10**6)).all()
    assert (np.diff(tx["tx_datetime"].astype(np.int64)) >= 0).all()
    assert np.array_equal(tx["transaction_id"], np.arange(len(tx["day"])))
    assert (tx["tx_amount"] >= 0).all()
    genuine = tx["tx_fraud_scenario"] != 3
    assert np.allclose(tx["tx_amount"][genuine], np.round(tx["tx_amount"][genuine], 2))


def test_fraud_scenario_1_every_large_amount_is_fraud(small_stream):
    tx = small_stream
    large = tx["tx_amount"] > SMALL.fraud.amount_threshold
    assert (tx["tx_fraud"][large] == 1).all()
    assert (tx["tx_fraud_scenario"] == 1).sum() > 0


def test_fraud_scenario_2_compromised_terminals_are_all_fraud(small_stream):
    tx = small_stream
    grid = compromised_terminal_days(SMALL.seed, SMALL.n_days,
                                     np.full(SMALL.n_days, SMALL.n_terminals),
                                     SMALL.fraud.compromised_terminals_per_day,
                                     SMALL.fraud.terminal_compromise_days)
    at_compromised = grid[tx["terminal_id"], tx["day"]]
    assert (tx["tx_fraud"][at_compromised] == 1).all()
    assert set(np.unique(tx["tx_fraud_scenario"][at_compromised])) <= {2, 3}
    assert at_compromised[tx["tx_fraud_scenario"] == 2].all()
    # A compromised terminal stays so for at least 28 days (runs can merge when chosen again).
    padded = np.pad(grid.astype(np.int8), ((0, 0), (1, 1)))
    starts = np.argwhere(np.diff(padded, axis=1) == 1)
    ends = np.argwhere(np.diff(padded, axis=1) == -1)
    lengths = ends[:, 1] - starts[:, 1]
    assert (lengths >= np.minimum(28, SMALL.n_days - starts[:, 1])).all()
    assert (grid[:, 1:] & ~grid[:, :-1]).sum(axis=0).max() <= 2


def test_fraud_scenario_3_a_third_of_the_cards_payments(small_stream):
    tx = small_stream
    s3 = tx["tx_fraud_scenario"] == 3
    assert s3.sum() > 0
    frame = pd.DataFrame({"customer": tx["customer_id"], "s3": s3})
    # Compromised cards: between a tenth and all of their payments are scenario 3 overall,
    # since a third of those in each 14-day window are picked and windows can overlap.
    share = frame[frame.customer.isin(frame.customer[s3])].groupby("customer").s3.mean()
    assert 0.05 < share.median() < 0.6
    # Their amounts were multiplied by 5: scenario 3 payments are much larger on average.
    assert tx["tx_amount"][s3].mean() > 3 * tx["tx_amount"][~s3 & (tx["tx_fraud"] == 0)].mean()


def test_same_seed_same_stream_other_seed_other_stream(small_stream):
    again = simulate_transactions(SMALL)
    assert all(np.array_equal(small_stream[k], again[k]) for k in small_stream)
    other = simulate_transactions(replace(SMALL, seed=SMALL.seed + 1))
    assert len(other["day"]) != len(small_stream["day"]) or \
        not np.array_equal(other["tx_amount"], small_stream["tx_amount"])


def _with_drift(**drift) -> dict:
    return simulate_transactions(replace(SMALL, drift=DriftScenarios(**drift)))


def _same_before(base: dict, drifted: dict, onset: int) -> bool:
    a, b = base["day"] < onset, drifted["day"] < onset
    return all(np.array_equal(base[k][a], drifted[k][b]) for k in ("customer_id", "terminal_id"))


def test_spend_shift_raises_amounts_of_a_fifth_of_customers(small_stream):
    onset = 20
    drifted = _with_drift(spend_shift=SpendShift(enabled=True, onset_day=onset))
    assert _same_before(small_stream, drifted, onset)
    genuine_after = lambda tx: (tx["day"] >= onset) & (tx["tx_fraud_scenario"] == 0)  # noqa: E731
    base = pd.DataFrame({"c": small_stream["customer_id"], "a": small_stream["tx_amount"]})[
        genuine_after(small_stream)].groupby("c").a.mean()
    shifted = pd.DataFrame({"c": drifted["customer_id"], "a": drifted["tx_amount"]})[
        genuine_after(drifted)].groupby("c").a.mean()
    ratio = (shifted / base).dropna()
    raised = ratio > 1.15
    assert 0.1 < raised.mean() < 0.3          # about 20% of customers
    assert 1.2 < ratio[raised].median() < 1.4  # by about 1.3x


def test_card_testing_bursts_of_small_night_payments(small_stream):
    onset = 25
    drifted = _with_drift(card_testing=CardTesting(enabled=True, onset_day=onset))
    assert _same_before(small_stream, drifted, onset)
    s4 = drifted["tx_fraud_scenario"] == 4
    assert (drifted["day"][s4] >= onset).all() and (drifted["tx_fraud"][s4] == 1).all()
    hours = pd.DatetimeIndex(drifted["tx_datetime"][s4]).hour
    assert (hours < 5).all()
    assert ((drifted["tx_amount"][s4] >= 1) & (drifted["tx_amount"][s4] <= 5)).all()
    bursts = pd.DataFrame({"d": drifted["day"][s4], "c": drifted["customer_id"][s4]})
    per_card_day = bursts.groupby(["d", "c"]).size()
    assert per_card_day.between(5, 20).all()
    assert (bursts.groupby("d").c.nunique() == 5).all()
    assert set(bursts.d) == set(range(onset, SMALL.n_days))


def test_activity_surge_more_payments_and_new_terminals(small_stream):
    onset = 20
    drifted = _with_drift(activity_surge=ActivitySurge(enabled=True, onset_day=onset))
    assert _same_before(small_stream, drifted, onset)
    new = drifted["terminal_id"] >= SMALL.n_terminals
    assert new.any() and (drifted["day"][new] >= onset).all()
    assert drifted["terminal_id"].max() < SMALL.n_terminals * 1.1
    after = lambda tx: (tx["day"] >= onset).sum()  # noqa: E731
    assert 1.35 < after(drifted) / after(small_stream) < 1.65


def test_cli_writes_identical_bytes_twice(small_project: Path):
    first, second = small_project / "a", small_project / "b"
    run(["aif", "simulate", "--out", str(first)], small_project)
    run(["aif", "simulate", "--out", str(second)], small_project)
    files = sorted(p.name for p in first.iterdir())
    assert len(files) == SMALL.n_days and files[0] == "2018-04-01.parquet"
    assert files == sorted(p.name for p in second.iterdir())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    table = pq.read_table(first / files[0])
    assert table.column_names == CANONICAL_COLUMNS


def test_cli_rejects_bad_params_with_one_line(small_project: Path):
    params = (small_project / "params.yaml").read_text().replace("n_customers:", "n_customerz:")
    (small_project / "params.yaml").write_text(params)
    result = run(["aif", "simulate"], small_project, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "simulate.n_customerz" in result.stderr
    assert not (small_project / "data" / "raw" / "transactions").exists()
