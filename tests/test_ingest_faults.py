"""Hostile inputs for ingest: every value arrives exactly or is quarantined with a reason.
Integers never pass through float64, labels are checked before any cast, naive local times
stay as written, and errors name the file's line. Pure frames where possible (fast); the
real CLI where the file itself is the point."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import run, write_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aif.config.params import IngestParams
from aif.data.ingest import SourceRows, ingest_rows, read_source
from aif.keys import key_of

COLUMNS = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount",
           "tx_fraud"]
NOW = pd.Timestamp("2026-01-01")


def rows_of(frame: pd.DataFrame) -> SourceRows:
    return SourceRows(frame, [Path("x.csv")], np.zeros(len(frame), int),
                      np.arange(1, len(frame) + 1))


def text_frame(**overrides) -> pd.DataFrame:
    "Rows as a CSV reader gives them for exact fields: text."
    n = max(len(v) for v in overrides.values())
    base = {"transaction_id": [str(i + 1) for i in range(n)],
            "tx_datetime": [f"2018-04-01 10:00:{i:02d}" for i in range(n)],
            "customer_id": ["1"] * n, "terminal_id": ["2"] * n, "tx_amount": [10.0] * n,
            "tx_fraud": ["0"] * n}
    base.update(overrides)
    return pd.DataFrame({k: pd.array(v, dtype="string") if k != "tx_amount" else v
                         for k, v in base.items()})


def quarantined(result) -> dict[int, str]:
    return dict(zip(result.quarantine.source_row, result.quarantine.rule, strict=True))


def test_integer_ids_keep_their_value_and_other_ids_get_keys():
    ids = [str(2**53), str(2**53 + 1), str(2**63 - 1), str(2**63), str(2**64 - 1), "0042"]
    result = ingest_rows(rows_of(text_frame(transaction_id=ids)), IngestParams(), now=NOW)
    assert quarantined(result) == {}
    written = result.transactions.transaction_id.tolist()
    assert sorted(written) == sorted([2**53, 2**53 + 1, 2**63 - 1] + [key_of(i) for i in ids[3:]])
    assert 42 not in written and result.transactions.transaction_id.dtype == np.int64
    # the id map gives back each hashed id's raw text, and only those
    id_map = result.id_map[result.id_map.field == "transaction_id"]
    assert dict(zip(id_map.key, id_map.raw, strict=True)) == {key_of(i): i for i in ids[3:]}


def test_float_ids_are_kept_only_where_a_float_is_exact():
    frame = text_frame(customer_id=["1"] * 3).assign(
        customer_id=[12.0, float(2**53 + 2), 3.5])
    result = ingest_rows(rows_of(frame), IngestParams(), now=NOW)
    assert quarantined(result) == {2: "inexact_float", 3: "not_an_integer"}
    assert result.transactions.customer_id.tolist() == [12]


def test_labels_are_checked_before_any_cast():
    labels = ["257", "256", "1024", "-255", "1", "0", "01", "1.0"]
    result = ingest_rows(rows_of(text_frame(tx_fraud=labels)), IngestParams(), now=NOW)
    assert quarantined(result) == {1: "unknown_label", 2: "unknown_label", 3: "unknown_label",
                                   4: "unknown_label"}
    assert sorted(result.transactions.tx_fraud.tolist()) == [0, 1, 1, 1]
    spelled = IngestParams(label_values={1: [1, "yes", True], 0: [0, "no", False]})
    frame = text_frame(tx_fraud=["yes", "No", " YES ", "maybe"])
    result = ingest_rows(rows_of(frame), spelled, now=NOW)
    assert quarantined(result) == {4: "unknown_label"}
    assert result.transactions.sort_values("transaction_id").tx_fraud.tolist() == [1, 0, 1]


def test_scenario_codes_do_not_wrap_around():
    frame = text_frame(tx_fraud_scenario=["256", "-255", "5", "3"])
    result = ingest_rows(rows_of(frame), IngestParams(), now=NOW)
    assert quarantined(result) == {1: "out_of_range", 2: "out_of_range", 3: "known_scenario"}
    assert result.transactions.tx_fraud_scenario.tolist() == [3]


def test_naive_times_stay_as_written_and_offsets_are_converted():
    times = ["2018-04-01 10:00:00", "2018-04-01T10:00:00+00:00", "2018-04-01 10:00:00Z"]
    params = IngestParams(timezone="Europe/Brussels")
    result = ingest_rows(rows_of(text_frame(tx_datetime=times)), params, now=NOW)
    got = result.transactions.sort_values("transaction_id").tx_datetime.astype(str).tolist()
    assert got == ["2018-04-01 10:00:00", "2018-04-01 12:00:00", "2018-04-01 12:00:00"]
    # the same naive value read as a timestamp column gives the same result
    parsed = text_frame(tx_datetime=times[:1]).assign(
        tx_datetime=pd.to_datetime([times[0]]).astype("datetime64[us]"))
    again = ingest_rows(rows_of(parsed), params, now=NOW)
    assert again.transactions.tx_datetime.astype(str).tolist() == ["2018-04-01 10:00:00"]


def test_non_ascii_digits_and_categorical_labels_are_quarantined_not_fatal():
    frame = text_frame(transaction_id=["١٢٣", "１２٣", "7"], tx_fraud=["1", "0", "١"])
    result = ingest_rows(rows_of(frame), IngestParams(), now=NOW)
    assert quarantined(result) == {3: "unknown_label"}   # "١٢٣" is text: an id, not 123
    assert sorted(result.transactions.transaction_id) == sorted([key_of("١٢٣"), key_of("１２٣")])
    categorical = text_frame(transaction_id=["1", "2", "3"]).assign(
        tx_fraud=pd.Categorical(["1", "0", None]))
    result = ingest_rows(rows_of(categorical), IngestParams(), now=NOW)
    assert quarantined(result) == {3: "missing"}


def test_compact_offsets_are_seen_as_offsets():
    times = ["2024-01-01T10+02:00", "20240101T1000+0200"]
    params = IngestParams(timezone="UTC")
    result = ingest_rows(rows_of(text_frame(tx_datetime=times)), params, now=NOW)
    assert result.transactions.tx_datetime.astype(str).tolist() == ["2024-01-01 08:00:00"] * 2


def test_sub_microsecond_times_are_not_truncated():
    times = ["2018-04-01 10:00:00.123456", "2018-04-01 10:00:00.1234567"]
    result = ingest_rows(rows_of(text_frame(tx_datetime=times)), IngestParams(), now=NOW)
    assert quarantined(result) == {2: "sub_microsecond"}
    assert str(result.transactions.tx_datetime.iloc[0]) == "2018-04-01 10:00:00.123456"


def test_a_fraction_past_nine_digits_is_not_cut_and_times_outside_years_1_to_9999_are_refused():
    """pandas reads nine digits of a second's fraction and drops the rest without a word; an
    instant near or past Python's datetime range has no local time pandas can give (it raised)."""
    times = ["2018-04-01 10:00:00.1234560009", "2018-04-01T10:00:00.1234560001+02:00",
             "2018-04-01 10:00:00.1234560000", "2018-04-01 10:00:00"]
    params = IngestParams(timezone="Europe/Brussels")
    result = ingest_rows(rows_of(text_frame(tx_datetime=times)), params, now=NOW)
    assert quarantined(result) == {1: "sub_microsecond", 2: "sub_microsecond"}
    assert sorted(result.transactions.tx_datetime) == [
        pd.Timestamp("2018-04-01 10:00:00"), pd.Timestamp("2018-04-01 10:00:00.123456")]
    epochs = ["253402300800", "4611686018427", "-62135596800", "1522576800"]
    result = ingest_rows(rows_of(text_frame(tx_datetime=epochs)), IngestParams(
        timezone="Europe/Brussels", datetime_unit="s"), now=NOW)
    assert quarantined(result) == {1: "out_of_range", 2: "out_of_range", 3: "out_of_range"}
    assert result.transactions.tx_datetime.astype(str).tolist() == ["2018-04-01 12:00:00"]
    # as Parquet can hold them: year 10000, and an "end of time" of 2^63 - 1 milliseconds
    for far in (np.array(["10000-01-01", "2018-04-01"], "datetime64[us]"),
                np.array([2**63 - 1, 1522576800000], "datetime64[ms]")):
        for stamps in (pd.Series(far), pd.Series(far).dt.tz_localize("UTC")):
            result = ingest_rows(rows_of(text_frame(tx_datetime=["x", "y"]).assign(
                tx_datetime=stamps)), params, now=NOW)
            assert quarantined(result) == {1: "out_of_range"}


def test_a_missing_attribute_value_stays_missing_in_its_type():
    """An empty cell ('', 'NULL', ...) of a nullable attribute is null, never the 0 an int
    parses to nor a bad boolean; an int attribute stays an integer (no float64 detour)."""
    attributes = {"n": {"column": "n", "type": "int", "nullable": True},
                  "b": {"column": "b", "type": "bool", "nullable": True},
                  "c": {"column": "c", "type": "category", "nullable": True}}
    frame = text_frame(transaction_id=["1", "2", "3"], n=["9007199254740993", "", "NULL"],
                       b=["yes", "", "NaN"], c=["a", "", "NULL"])
    result = ingest_rows(rows_of(frame), IngestParams(attributes=attributes), now=NOW)
    assert quarantined(result) == {}
    written = result.transactions.sort_values("transaction_id")
    assert written.n.tolist()[0] == 9007199254740993 and written.n.isna().tolist() == [
        False, True, True]
    assert written.b.isna().tolist() == [False, True, True] and written.b.iloc[0]
    assert written.c.tolist()[:2] == ["a", pd.NA]
    # a boolean column as a category is 'true' / 'false', as a file among text files gives it
    booleans = text_frame(transaction_id=["1", "2"]).assign(c=[True, False])
    result = ingest_rows(rows_of(booleans), IngestParams(attributes={
        "c": {"column": "c", "type": "category"}}), now=NOW)
    assert sorted(result.transactions.c) == ["false", "true"]
    # and the values a category may take are read so too: true, and 5411.0 as 5411
    declared = {"c": {"column": "c", "type": "category", "values": [True, False]},
                "m": {"column": "m", "type": "category", "values": [5411.0]}}
    result = ingest_rows(rows_of(booleans.assign(m=[5411.0, 5411.0])),
                         IngestParams(attributes=declared), now=NOW)
    assert quarantined(result) == {} and result.transactions.m.tolist() == ["5411"] * 2


def test_a_file_holding_timestamps_or_booleans_reads_as_alone_beside_text_files(tmp_path):
    """A source whose files read a column as different types is read as text, but for the
    values whose text would be read otherwise: a Parquet file's timestamps are not parsed by
    the CSV's `datetime_format`; a boolean category is 'true' as in its file alone, and a
    boolean id is not_an_id, not the text 'true' keyed as a card."""
    frame = pd.DataFrame({"transaction_id": [1, 2, 3, 4], "customer_id": ["1", "2", "3", "4"],
                          "terminal_id": ["2"] * 4, "tx_amount": [10.0] * 4,
                          "tx_fraud": [0] * 4, "flag": ["yes", "no", "yes", "no"]})
    frame.iloc[:2].assign(tx_datetime=["01/04/2018 10:00", "01/04/2018 11:00"]).to_csv(
        tmp_path / "a.csv", index=False)
    stamps = pd.to_datetime(["2018-04-01 08:00", "2018-04-01 09:00"]).tz_localize("UTC")
    frame.iloc[2:].assign(tx_datetime=stamps, flag=[True, False],
                          customer_id=[True, False]).to_parquet(tmp_path / "b.parquet")
    params = IngestParams(datetime_format="%d/%m/%Y %H:%M", timezone="Europe/Brussels",
                          attributes={"flag": {"column": "flag", "type": "category"}})
    result = ingest_rows(read_source(tmp_path, params), params, now=NOW)
    assert quarantined(result) == {1: "not_an_id", 2: "not_an_id"}   # b.parquet's two rows
    alone = replace(params, datetime_format=None)
    result = ingest_rows(read_source(tmp_path / "b.parquet", alone), alone, now=NOW)
    assert quarantined(result) == {1: "not_an_id", 2: "not_an_id"}
    frame.iloc[2:].assign(tx_datetime=stamps, flag=[True, False]).to_parquet(
        tmp_path / "b.parquet")
    result = ingest_rows(read_source(tmp_path, params), params, now=NOW)
    assert quarantined(result) == {}
    written = result.transactions.sort_values("transaction_id")
    assert written.tx_datetime.astype(str).tolist() == [
        "2018-04-01 10:00:00", "2018-04-01 11:00:00", "2018-04-01 10:00:00",
        "2018-04-01 11:00:00"]
    assert written.flag.tolist() == ["yes", "no", "true", "false"]


def test_a_decimal_card_beside_float_cards_keeps_its_digits(tmp_path):
    """Arrow widens decimals and floats of two files to floats without a word: a decimal card
    no float holds (above 2^53) would become another number, or inexact_float."""
    from decimal import Decimal

    frame = pd.DataFrame({"transaction_id": [1, 2], "tx_datetime": ["2018-04-01 10:00"] * 2,
                          "terminal_id": [2, 2], "tx_amount": [10.0, 10.0], "tx_fraud": [0, 0]})
    frame.assign(customer_id=[12.0, 13.0]).to_parquet(tmp_path / "a.parquet")
    decimals = pa.Table.from_pandas(frame.assign(transaction_id=[3, 4]), preserve_index=False)
    pq.write_table(decimals.append_column("customer_id", pa.array(
        [Decimal(9_123_456_789_012_345), Decimal(14)], pa.decimal128(22, 0))),
        tmp_path / "b.parquet")
    result = ingest_rows(read_source(tmp_path, IngestParams()), IngestParams(), now=NOW)
    assert quarantined(result) == {}
    assert sorted(result.transactions.customer_id) == [12, 13, 14, 9_123_456_789_012_345]


def test_implausible_amounts_are_quarantined():
    frame = text_frame(transaction_id=["1", "2", "3"]).assign(
        tx_amount=[12.5, 1e308, float("inf")])
    result = ingest_rows(rows_of(frame), IngestParams(max_amount=1e6), now=NOW)
    assert quarantined(result) == {2: "implausible_amount", 3: "finite"}


# --- the invariant, on hostile text ----------------------------------------------------------

integer_text = st.one_of(
    st.integers(-2**65, 2**65).map(str),
    st.integers(0, 2**64).map(lambda i: f"00{i}"),
    st.text(max_size=6),
    st.sampled_from(["", " ", "1.5", "1e3", "abc", "+7", "7.0", "-0", "nan", "∞", "7"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ids=st.lists(integer_text, min_size=1, max_size=30), data=st.data())
def test_every_row_is_written_exactly_or_quarantined(ids, data):
    n = len(ids)
    cards = data.draw(st.lists(integer_text, min_size=n, max_size=n))
    labels = data.draw(st.lists(st.sampled_from(["0", "1", "2", "257", "-1", "x", "", "01"]),
                                min_size=n, max_size=n))
    frame = text_frame(transaction_id=ids, customer_id=cards, tx_fraud=labels)
    result = ingest_rows(rows_of(frame), IngestParams(), now=NOW)
    report = result.report
    assert report["rows_written"] + report["rows_quarantined"] == n == report["rows_read"]
    kept = sorted(set(range(1, n + 1)) - set(result.quarantine.source_row))
    written = result.transactions
    # each written id is the key of the text that was there: its own value or its hash
    expected = sorted((key_of(ids[r - 1].strip()), key_of(cards[r - 1].strip())) for r in kept)
    assert sorted(zip(written.transaction_id.tolist(), written.customer_id.tolist(),
                      strict=True)) == expected
    for r in kept:
        assert ids[r - 1].strip() and cards[r - 1].strip()   # only blank ids are missing
        assert labels[r - 1] in ("0", "1", "01")
    assert len(set(written.transaction_id)) == len(written)   # a repeated id is quarantined


# --- files: lines, field counts, encodings, damaged interim data -------------------------------

def ingest_cli(project: Path, source: Path, **ingest) -> tuple[int, str]:
    write_params(project, ingest={"source": str(source), "max_invalid_fraction": 0.5, **ingest})
    result = run(["aif", "ingest"], project, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip()


HEADER = ",".join(COLUMNS)


def test_quarantine_names_file_lines_despite_blank_lines_and_bad_records(small_project,
                                                                         tmp_path):
    source = tmp_path / "export.csv"
    source.write_text("\n".join([
        HEADER,                                          # line 1
        "1,2018-04-01 10:00:00,1,2,10.0,0",              # line 2
        "",                                              # line 3: blank
        "2,2018-04-01 10:01:00,1,2",                     # line 4: two fields short
        "3,2018-04-01 10:02:00,1,2,-5.0,0",              # line 5: negative amount
        "",
        "4,2018-04-01 10:03:00,1,2,10.0,0,extra",        # line 7: one field too many
        "5,2018-04-01 10:04:00,1,2,11.0,0",              # line 8
    ]) + "\n")
    code, err = ingest_cli(small_project, source, max_invalid_fraction=0.9)
    assert code == 0, err
    quarantine = pd.read_parquet(small_project / "data/interim/quarantine.parquet")
    by_line = dict(zip(quarantine.source_line, quarantine.rule, strict=True))
    assert by_line == {4: "wrong_field_count", 5: "non_negative", 7: "wrong_field_count"}
    by_record = dict(zip(quarantine.source_row, quarantine.rule, strict=True))
    assert by_record == {2: "wrong_field_count", 3: "non_negative", 4: "wrong_field_count"}
    report = json.loads((small_project / "reports/ingest.json").read_text())
    assert (report["rows_read"], report["rows_written"], report["rows_quarantined"]) == (5, 2, 3)


def test_text_in_another_encoding_is_refused_or_read_as_told(small_project, tmp_path):
    source = tmp_path / "latin.csv"
    source.write_bytes((HEADER + ",merchant\n1,2018-04-01 10:00:00,1,2,10.0,0,Café Müller\n")
                       .encode("latin-1"))
    code, err = ingest_cli(small_project, source, extra_columns="keep")
    assert code == 2 and "\n" not in err and "utf-8" in err and "ingest.encoding" in err
    assert not (small_project / "data/interim/transactions.parquet").exists()
    code, err = ingest_cli(small_project, source, extra_columns="keep", encoding="latin-1")
    assert code == 0, err
    out = pd.read_parquet(small_project / "data/interim/transactions.parquet")
    assert out.merchant.tolist() == ["Café Müller"]


def test_a_damaged_interim_file_gives_one_line(small_project):
    run(["aif", "simulate"], small_project)
    run(["aif", "ingest"], small_project)
    interim = small_project / "data/interim/transactions.parquet"
    interim.write_bytes(interim.read_bytes()[: interim.stat().st_size // 2])
    result = run(["aif", "featurize"], small_project, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot be read" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parquet_integer_columns_keep_their_values(tmp_path):
    table = pa.table({"transaction_id": pa.array([1, 2**63 - 1, None], pa.int64()),
                      "customer_id": pa.array([5, 2**64 - 1, 7], pa.uint64())})
    pq.write_table(table, tmp_path / "ids.parquet")
    frame = read_source(tmp_path / "ids.parquet", IngestParams()).frame
    assert frame.transaction_id.tolist()[:2] == [1, 2**63 - 1]   # no float64 on the way
    assert frame.customer_id.tolist()[1] == 2**64 - 1
