"""Ingest: bad files of every kind give the documented one-line error or quarantine, never a
traceback or silent loss; rows read = rows written + rows quarantined, always."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_project, run, write_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aif.config.params import IngestParams, ParamsError
from aif.data.ingest import SourceRows, ingest_rows, parse_ids
from aif.keys import key_of

MAPPING = {"transaction_id": "TX_ID", "tx_datetime": "TX_TIME", "customer_id": "CARD",
           "terminal_id": "TERMINAL", "tx_amount": "AMOUNT_EUR", "tx_fraud": "IS_FRAUD"}


def good_frame(n: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "TX_ID": np.arange(n) + 100,
        "TX_TIME": (pd.Timestamp("2019-01-01") + pd.to_timedelta(
            rng.integers(0, 86_400 * 30, n), unit="s")).strftime("%Y-%m-%d %H:%M:%S"),
        "CARD": rng.integers(0, 50, n), "TERMINAL": rng.integers(0, 80, n),
        "AMOUNT_EUR": np.round(rng.uniform(1, 200, n), 2),
        "IS_FRAUD": (rng.random(n) < 0.02).astype(int),
        "MERCHANT_NAME": "shop"})


def ingest_cli(project: Path, source: Path, **ingest) -> tuple[int, str]:
    write_params(project, ingest={"source": str(source), "columns": MAPPING, **ingest})
    result = run(["aif", "ingest"], project, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stderr.strip()


def outputs(project: Path) -> dict:
    return {"transactions": project / "data/interim/transactions.parquet",
            "quarantine": project / "data/interim/quarantine.parquet",
            "report": project / "reports/ingest.json"}


def assert_no_outputs(project: Path) -> None:
    assert not any(p.exists() for p in outputs(project).values())
    leftovers = [p for p in project.rglob(".*tmp-*")]
    assert leftovers == []


def test_csv_with_mapping_sorted_and_extra_columns_dropped(small_project, tmp_path):
    frame = good_frame()
    source = tmp_path / "bank.csv"
    frame.to_csv(source, index=False)
    code, err = ingest_cli(small_project, source)
    assert code == 0, err
    out = pd.read_parquet(outputs(small_project)["transactions"])
    assert list(out.columns) == ["transaction_id", "tx_datetime", "customer_id", "terminal_id",
                                 "tx_amount", "tx_fraud"]
    assert len(out) == len(frame)
    assert (out.sort_values(["tx_datetime", "transaction_id"]).index == out.index).all()
    assert str(out.tx_datetime.dtype).startswith("datetime64") and out.tx_fraud.dtype == np.int8
    report = json.loads(outputs(small_project)["report"].read_text())
    assert report["rows_read"] == report["rows_written"] == len(frame)
    assert report["rows_quarantined"] == 0


def test_extra_columns_kept_when_asked(small_project, tmp_path):
    source = tmp_path / "bank.parquet"
    good_frame(50).to_parquet(source)
    code, err = ingest_cli(small_project, source, extra_columns="keep")
    assert code == 0, err
    out = pd.read_parquet(outputs(small_project)["transactions"])
    assert out.columns[-1] == "MERCHANT_NAME" and (out.MERCHANT_NAME == "shop").all()
    assert "personal data" not in err
    # a pii list of one's own drops the defaults: what it then keeps of them is said, loudly
    good_frame(50).assign(IBAN="BE71 0961 2345 6769", Email="a@b.example").to_parquet(source)
    code, err = ingest_cli(small_project, source, extra_columns="keep", pii=["iban"])
    out = pd.read_parquet(outputs(small_project)["transactions"])
    assert code == 0 and "IBAN" not in out.columns and "Email" in out.columns, err
    assert "columns Email are personal data by default, but ingest.pii leaves them out" in err


def test_empty_file(small_project, tmp_path):
    source = tmp_path / "empty.csv"
    source.write_text("")
    code, err = ingest_cli(small_project, source)
    assert code == 2 and err == f"ingest: {source}: file is empty"
    assert_no_outputs(small_project)


def test_header_only_file(small_project, tmp_path):
    source = tmp_path / "header.csv"
    source.write_text(",".join(good_frame(1).columns) + "\n")
    code, err = ingest_cli(small_project, source)
    assert code == 2 and "no rows" in err and str(source) in err
    assert_no_outputs(small_project)


def test_wrong_delimiter(small_project, tmp_path):
    source = tmp_path / "semicolons.csv"
    good_frame(20).to_csv(source, index=False, sep=";")
    code, err = ingest_cli(small_project, source)
    assert code == 2 and "\n" not in err
    assert "TX_ID" in err and "csv_delimiter" in err
    assert_no_outputs(small_project)
    code, err = ingest_cli(small_project, source, csv_delimiter=";")
    assert code == 0, err


def test_missing_mapped_column(small_project, tmp_path):
    source = tmp_path / "no_amount.csv"
    good_frame(20).drop(columns="AMOUNT_EUR").to_csv(source, index=False)
    code, err = ingest_cli(small_project, source)
    assert code == 2
    assert "'AMOUNT_EUR'" in err and "tx_amount" in err and str(source) in err
    assert_no_outputs(small_project)


def test_unreadable_parquet(small_project, tmp_path):
    source = tmp_path / "broken.parquet"
    source.write_bytes(b"PAR1 this is not parquet at all")
    code, err = ingest_cli(small_project, source)
    assert code == 2 and err.startswith(f"ingest: {source}: cannot be read as PARQUET")
    assert_no_outputs(small_project)


def test_missing_source(small_project, tmp_path):
    code, err = ingest_cli(small_project, tmp_path / "nowhere")
    assert code == 2 and "no such file or folder" in err


@pytest.mark.parametrize("column, bad_value, rule", [
    ("AMOUNT_EUR", "twelve", "not_a_number"),
    ("AMOUNT_EUR", "-5", "non_negative"),
    ("IS_FRAUD", "2", "unknown_label"),
    ("TX_TIME", "yesterday", "not_a_timestamp"),
    ("TX_TIME", "2999-01-01 00:00:00", "not_in_future"),
    ("TERMINAL", "", "missing"),
])
def test_bad_values_are_quarantined_with_their_rule(small_project, tmp_path, column, bad_value,
                                                     rule):
    frame = good_frame().astype({column: object})
    frame.loc[[7, 1041], column] = bad_value
    source = tmp_path / "bank.csv"
    frame.to_csv(source, index=False)
    code, err = ingest_cli(small_project, source, max_invalid_fraction=0.01)
    assert code == 0, err
    quarantine = pd.read_parquet(outputs(small_project)["quarantine"])
    assert list(quarantine.source_row) == [8, 1042]  # 1-based data rows
    assert list(quarantine.source_line) == [9, 1043]  # lines of the file, header = 1
    assert set(quarantine.rule) == {rule}
    report = json.loads(outputs(small_project)["report"].read_text())
    assert report["rows_written"] == len(frame) - 2 and report["rows_quarantined"] == 2
    canonical = {v: k for k, v in MAPPING.items()}[column]
    assert report["quarantined_by_rule"] == {f"{canonical}:{rule}": 2}


def test_duplicate_ids_keep_the_first(small_project, tmp_path):
    frame = good_frame()
    frame.loc[500, "TX_ID"] = frame.loc[10, "TX_ID"]
    source = tmp_path / "dupes.csv"
    frame.to_csv(source, index=False)
    code, err = ingest_cli(small_project, source)
    assert code == 0, err
    out = pd.read_parquet(outputs(small_project)["transactions"])
    quarantine = pd.read_parquet(outputs(small_project)["quarantine"])
    assert list(quarantine.rule) == ["duplicate_id"] and list(quarantine.source_row) == [501]
    kept = out[out.transaction_id == frame.loc[10, "TX_ID"]]
    assert len(kept) == 1 and kept.tx_amount.iloc[0] == frame.loc[10, "AMOUNT_EUR"]


def test_too_many_bad_rows_fail_and_leave_previous_outputs(small_project, tmp_path):
    source = tmp_path / "bank.csv"
    good_frame().to_csv(source, index=False)
    assert ingest_cli(small_project, source)[0] == 0
    before = {k: p.read_bytes() for k, p in outputs(small_project).items()}
    frame = good_frame().astype({"AMOUNT_EUR": object})
    frame.loc[[3, 1041, 1500], "AMOUNT_EUR"] = "unknown"
    frame.to_csv(source, index=False)
    code, err = ingest_cli(small_project, source)
    assert code == 2 and "\n" not in err
    assert "column tx_amount rule not_a_number" in err and f"line 5 of {source}" in err
    assert "max_invalid_fraction=0.001" in err
    assert {k: p.read_bytes() for k, p in outputs(small_project).items()} == before
    assert [p for p in small_project.rglob(".*tmp-*")] == []


def test_timezone_aware_source_is_converted(small_project, tmp_path):
    frame = good_frame(10)
    frame["TX_TIME"] = pd.to_datetime(frame["TX_TIME"]).dt.tz_localize("UTC")
    source = tmp_path / "utc.parquet"
    frame.to_parquet(source)
    code, err = ingest_cli(small_project, source)
    assert code == 2 and "column tx_datetime rule timezone_aware: 10 rows, first at row 1" in err
    assert err.endswith("set ingest.timezone to the terminals' local zone (e.g. Europe/Brussels)")
    code, err = ingest_cli(small_project, source, timezone="Europe/Brussels")
    assert code == 0, err
    out = pd.read_parquet(outputs(small_project)["transactions"]).sort_values("transaction_id")
    expected = frame.TX_TIME.dt.tz_convert("Europe/Brussels").dt.tz_localize(None)
    assert (out.tx_datetime.to_numpy() == expected.to_numpy().astype("datetime64[us]")).all()


def test_folder_of_files_and_row_origin(small_project, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    frame = good_frame(300)
    frame.iloc[:100].to_csv(folder / "a.csv", index=False)
    bad = frame.iloc[100:].astype({"AMOUNT_EUR": str}).copy()
    bad.iloc[5, bad.columns.get_loc("AMOUNT_EUR")] = "oops"
    bad.to_parquet(folder / "b.parquet")
    code, err = ingest_cli(small_project, folder, max_invalid_fraction=0.01)
    assert code == 0, err
    quarantine = pd.read_parquet(outputs(small_project)["quarantine"])
    assert list(quarantine.source_file) == [str(folder / "b.parquet")]
    assert list(quarantine.source_row) == [6]



def test_cards_read_as_floats_or_decimals_keep_the_key_of_their_digits(small_project, tmp_path):
    """Files of one source that read a column as different types (merchants alphanumeric in
    one, numeric in another) are read as text: a card column a file holds as floats (pandas
    writes an integer column with a null so) or as decimals with a scale keeps the key of its
    digits, the key the CSV's card gets, never the key of a float's text (4.9e+15), which is
    another card, silently; a category too (5411.0 is 5411). A card that is not an exact
    integer is quarantined with its rule, the same row as in its file read alone."""
    folder, alone = tmp_path / "drop", tmp_path / "alone"
    folder.mkdir(), alone.mkdir()
    frame = good_frame(90).assign(CARD=lambda f: f.CARD + 4_916_716_558_875_000,
                                  MCC=lambda f: 5000 + f.CARD % 7)
    frame.loc[61, "CARD"] = 9_123_456_789_012_345   # a decimal no float holds, beside floats
    frame.iloc[:30].assign(TERMINAL=lambda f: "t" + f.TERMINAL.astype(str)).to_csv(
        folder / "a.csv", index=False)
    floats = frame.iloc[30:60].astype({"CARD": "float64", "MCC": "float64"})
    floats.iloc[[3, 4], floats.columns.get_loc("CARD")] = [1234.5, 2.0**60]
    floats.iloc[5, floats.columns.get_loc("MCC")] = np.nan
    floats.to_parquet(folder / "b.parquet")
    floats.to_parquet(alone / "b.parquet")
    decimals = pa.Table.from_pandas(frame.iloc[60:], preserve_index=False)
    decimals = decimals.set_column(decimals.schema.get_field_index("CARD"), "CARD",
                                   decimals["CARD"].cast(pa.decimal128(22, 2)))
    decimals = decimals.set_column(decimals.schema.get_field_index("CARD"), "CARD", pa.array(
        [Decimal("7.25") if i == 2 else v.as_py() for i, v in enumerate(decimals["CARD"])],
        pa.decimal128(22, 2)))
    pq.write_table(decimals, folder / "c.parquet")
    attributes = {"mcc": {"column": "MCC", "type": "category", "nullable": True}}
    quarantined = {}
    for source in (folder, alone):
        code, err = ingest_cli(small_project, source, max_invalid_fraction=0.1,
                               attributes=attributes)
        assert code == 0, err
        written = pd.read_parquet(outputs(small_project)["transactions"]).set_index(
            "transaction_id")
        q = pd.read_parquet(outputs(small_project)["quarantine"])
        quarantined[source] = list(zip(q.source_file.map(lambda f: Path(f).name), q.source_row,
                                       q.column, q.rule, strict=True))
        cards = frame.set_index("TX_ID").CARD
        assert (written.customer_id == cards.loc[written.index]).all()   # canonical: their value
        mcc = frame.set_index("TX_ID").MCC.astype(str).loc[written.index]
        assert (written.mcc.fillna("none") == mcc.where(written.mcc.notna(), "none")).all()
        assert written.mcc.isna().sum() == 1
    assert quarantined[alone] == [("b.parquet", 4, "customer_id", "not_an_integer"),
                                  ("b.parquet", 5, "customer_id", "inexact_float")]
    assert quarantined[folder] == quarantined[alone] + [("c.parquet", 3, "customer_id",
                                                         "not_an_integer")]


def alone(values: list, kind: type) -> pd.Series:
    "A column of one type, as a file of it alone is read (decimals: Parquet's, through ingest)."
    from aif.data.ingest import _exact_keys, _pandas_type

    if kind is Decimal:   # Arrow's text of the integers, or the decimals if one has a fraction
        table = _exact_keys(pa.table({"c": pa.array(values, pa.decimal128(38, 2))}), {"c"})
        return table["c"].to_pandas(types_mapper=_pandas_type)
    return pd.Series(values, dtype="float64" if kind is float else "string")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(
    st.floats(), st.integers(0, 2**70).map(float),
    st.decimals(-10**30, 10**30, allow_nan=False, allow_infinity=False, places=2),
    st.from_regex(r" ?0?[0-9]{1,20} ?", fullmatch=True), st.sampled_from(["", " ", "NULL"])),
    min_size=1, max_size=30))
def test_a_number_among_texts_gets_the_key_or_rule_of_its_own_column(values):
    """What a source whose files read an id column as different types gives: each float,
    decimal and text has the key, or breaks the rule, it has in a column of its own type."""
    mixed_keys, mixed_rules, _ = parse_ids([pd.Series(values, dtype=object)])
    for kind in (float, Decimal, str):
        at = [i for i, v in enumerate(values) if type(v) is kind]
        if not at:
            continue
        keys, rules, _ = parse_ids([alone([values[i] for i in at], kind)])
        assert mixed_rules.reindex(at).tolist() == rules.reindex(range(len(at))).tolist()
        fine = rules.reindex(range(len(at))).isna().to_numpy()
        assert (mixed_keys[at].to_numpy()[fine] == keys.to_numpy()[fine]).all()


def test_an_empty_cell_is_no_value_whatever_the_other_rows_hold(small_project, tmp_path):
    """A CSV reader takes '' (and 'NULL', 'NaN', ...) in a column of numbers for no value; in
    the same column read as text, because another row holds 'abc', they are no value too: a
    nullable attribute keeps them as null in both files, and only 'abc' is quarantined."""
    folder = tmp_path / "drop"
    folder.mkdir()
    frame = good_frame(40)
    numbers = frame.iloc[:20].assign(LAT="50.1")
    numbers.iloc[[3, 4], numbers.columns.get_loc("LAT")] = ["", "NULL"]
    text = frame.iloc[20:].assign(LAT="50.1")
    text.iloc[[3, 4, 5], text.columns.get_loc("LAT")] = ["", "NULL", "abc"]
    numbers.to_csv(folder / "a.csv", index=False)
    text.to_csv(folder / "b.csv", index=False)
    code, err = ingest_cli(small_project, folder, max_invalid_fraction=0.1, attributes={
        "lat": {"column": "LAT", "type": "float", "nullable": True}})
    assert code == 0, err
    written = pd.read_parquet(outputs(small_project)["transactions"])
    quarantine = pd.read_parquet(outputs(small_project)["quarantine"])
    assert len(written) == 39 and written.lat.isna().sum() == 4
    assert list(quarantine.source_file) == [str(folder / "b.csv")]
    assert list(quarantine.source_row) == [6] and "not_a_number" in quarantine.rule.iloc[0]


# The invariant, on random frames with random damage: every row is written or quarantined.
damage = st.lists(st.tuples(st.integers(0, 59), st.sampled_from(
    ["TX_ID", "TX_TIME", "CARD", "AMOUNT_EUR", "IS_FRAUD"]),
    st.sampled_from([None, "x", "-1", "2", "1.5", "2999-01-01", "7"])), max_size=40)


def test_a_european_export_with_decimal_commas_gives_the_same_values(tmp_path):
    """`ingest.decimal: ","` (with `csv_delimiter: ";"`) reads 12,50 as 12.5: the same values
    as the export written with points, for the amount and a float attribute. A text with a
    point there (12.50, 1.234,50) is not_a_number, never another value; a Parquet file's
    numbers beside the CSV keep their values (their text would have a point)."""
    from aif.data.ingest import read_source

    frame = good_frame(300).assign(LAT=np.round(np.random.default_rng(1).uniform(-90, 90, 300), 6))
    attributes = {"lat": {"column": "LAT", "type": "float"}}
    points, commas = tmp_path / "points", tmp_path / "commas"
    points.mkdir(), commas.mkdir()
    frame.to_csv(points / "bank.csv", index=False)
    frame.to_csv(commas / "bank.csv", index=False, sep=";", decimal=",")

    def ingested(folder: Path, **params):
        params = IngestParams(columns=MAPPING, attributes=attributes, reject_future=False,
                              **params)
        return ingest_rows(read_source(folder, params), params)

    expected = ingested(points).transactions
    got = ingested(commas, csv_delimiter=";", decimal=",").transactions
    assert len(got) == 300
    pd.testing.assert_frame_equal(got[["tx_amount", "lat"]], expected[["tx_amount", "lat"]])
    # a point in a text, and numbers from a Parquet file of the same source
    broken = frame.head(3).assign(TX_ID=[1, 2, 3], AMOUNT_EUR=["12.50", "1.234,50", "7,25"])
    broken.to_csv(commas / "more.csv", index=False, sep=";", decimal=",")
    pq.write_table(pa.table({**{c: frame[c].head(2).to_numpy() for c in MAPPING.values()
                                if c != "AMOUNT_EUR"},
                             "TX_ID": [4, 5], "LAT": [1.5, 2.25],
                             "AMOUNT_EUR": pa.array([Decimal("12.50"), Decimal("0.10")],
                                                    pa.decimal128(10, 2))}),
                   commas / "more.parquet")
    result = ingested(commas, csv_delimiter=";", decimal=",")
    quarantined = result.quarantine
    assert quarantined.rule.tolist() == ["not_a_number"] * 2 and set(quarantined.column) == {
        "tx_amount"} and sorted(quarantined.source_line) == [2, 3], quarantined
    amounts = result.transactions.set_index("transaction_id").tx_amount
    assert amounts[3] == 7.25 and amounts[4] == 12.5 and amounts[5] == 0.1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=20))
def test_a_number_written_with_a_decimal_comma_reads_as_with_a_point(values):
    "Whether Arrow reads the column as numbers or ingest reads its text, the value is exact."
    import pyarrow.csv as pa_csv

    from aif.data.ingest import _parse_amount
    texts = [repr(v).replace(".", ",") for v in values]
    parsed, rules = _parse_amount(pd.Series(texts, dtype="string"), ",")
    assert rules.empty and parsed.tolist() == values
    read = pa_csv.read_csv(pa.py_buffer("\n".join(["a", *texts]).encode()),
                           parse_options=pa_csv.ParseOptions(delimiter=";"),
                           convert_options=pa_csv.ConvertOptions(decimal_point=","))
    assert read["a"].to_pylist() == values
    points, _ = _parse_amount(pd.Series([repr(v) for v in values], dtype="string"), ",")
    assert points.isna().tolist() == ["." in repr(v) for v in values]


LOCALES = [(".", ","), (",", "."), (",", " "), (".", "'"), (",", "\u202f")]   # decimal, thousands


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e15, 1e15), st.integers(0, 4)), min_size=1, max_size=20),
       st.sampled_from(LOCALES))
def test_a_number_written_with_thousands_separators_reads_as_without(numbers, locale):
    """1,234,567.50 (or 1.234.567,50, 1 234 567,50, ...) is 1234567.5 exactly; a separator
    anywhere but between groups of three digits before the point is not a number."""
    from aif.data.ingest import _parse_amount
    decimal, thousands = locale
    plain = [f"{v:.{k}f}" for v, k in numbers]
    written = [f"{v:,.{k}f}".translate({ord(","): thousands, ord("."): decimal})
               for v, k in numbers]
    parsed, rules = _parse_amount(pd.Series(written, dtype="string"), decimal, thousands)
    assert rules.empty, (written, rules)
    assert parsed.tolist() == [float(t) for t in plain]
    misplaced = [f"12{thousands}34", f"1{thousands}2345", f"1{thousands}234{thousands}56",
                 f"1{decimal}234{thousands}567"]
    if not thousands.isspace():   # a space before or after a number is stripped, as anywhere
        misplaced += [f"{thousands}123", f"123{thousands}"]
    _, rules = _parse_amount(pd.Series(misplaced, dtype="string"), decimal, thousands)
    assert rules.tolist() == ["not_a_number"] * len(misplaced)


def test_an_export_with_thousands_separators_gives_the_same_values(tmp_path):
    from aif.data.ingest import read_source
    frame = good_frame(300).assign(AMOUNT_EUR=lambda f: f.AMOUNT_EUR * 37)   # up to 7,400
    plain, grouped = tmp_path / "plain", tmp_path / "grouped"
    plain.mkdir(), grouped.mkdir()
    frame.to_csv(plain / "bank.csv", index=False)
    frame.assign(AMOUNT_EUR=[f"{v:,.2f}" for v in frame.AMOUNT_EUR]).to_csv(
        grouped / "bank.csv", index=False)   # quoted: the delimiter is a comma too

    def ingested(folder: Path, **params):
        params = IngestParams(columns=MAPPING, reject_future=False, **params)
        return ingest_rows(read_source(folder, params), params)

    expected = ingested(plain).transactions
    assert (expected.tx_amount >= 1000).sum() > 100
    got = ingested(grouped, thousands=",")
    assert got.quarantine.empty
    pd.testing.assert_frame_equal(got.transactions, expected)
    assert len(ingested(grouped).quarantine) > 100   # without the param: not_a_number


def test_thousands_must_be_one_character_other_than_the_decimal():
    for bad in (",,", "1", "-", "."):
        with pytest.raises(ParamsError, match="ingest.thousands"):
            IngestParams(thousands=bad)
    assert IngestParams(decimal=",", csv_delimiter=";", thousands=".").thousands == "."


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage=damage, n=st.integers(1, 60))
def test_every_row_is_written_or_quarantined(damage, n):
    frame = good_frame(n).astype(object)
    for row, column, value in damage:
        if row < n:
            frame.loc[row, column] = value
    rows = SourceRows(frame, [Path("x.csv")], np.zeros(n, int), np.arange(1, n + 1))
    result = ingest_rows(rows, IngestParams(columns=MAPPING),
                         now=pd.Timestamp("2026-01-01"))
    written, quarantined = result.report["rows_written"], result.report["rows_quarantined"]
    assert written + quarantined == n
    assert len(result.transactions) == written and len(result.quarantine) == quarantined
    assert sorted(result.quarantine.source_row) == sorted(set(result.quarantine.source_row))
    assert result.transactions.transaction_id.is_unique
    kept_rows = set(range(1, n + 1)) - set(result.quarantine.source_row)
    # every written id is the key of the value that was there (aif.keys, one value at a time)
    kept = frame.TX_ID.iloc[[r - 1 for r in sorted(kept_rows)]]
    kept_ids = [key_of(str(v).strip()) for v in kept]
    assert sorted(kept_ids) == sorted(result.transactions.transaction_id)
    table = pa.Table.from_pandas(result.transactions)
    assert table.num_rows == written


def test_the_quarantine_names_a_file_as_params_do_so_clones_elsewhere_write_the_same_bytes(
        tmp_path):
    """A quarantined row's `source_file` is the file as params name it, relative to the
    project: with the absolute path, a colleague's clone wrote another quarantine (and
    dvc.lock) from the same data."""
    frame = good_frame(200).astype({"AMOUNT_EUR": object})
    frame.loc[7, "AMOUNT_EUR"] = "n/a"
    written = []
    for where in ("a", "b/deeper"):
        project = make_project(tmp_path / where / "project")
        (project / "data/landing").mkdir(parents=True)
        frame.to_csv(project / "data/landing/bank.csv", index=False)
        code, err = ingest_cli(project, Path("data/landing/bank.csv"), max_invalid_fraction=0.5)
        assert code == 0, err
        quarantine = pd.read_parquet(outputs(project)["quarantine"])
        assert quarantine.source_file.tolist() == ["data/landing/bank.csv"]
        assert quarantine.source_line.tolist() == [9]   # the header is line 1
        written.append(outputs(project)["quarantine"].read_bytes())
    assert written[0] == written[1]


def test_simulator_landing_zone_roundtrip(small_project):
    run(["aif", "simulate"], small_project)
    run(["aif", "ingest"], small_project)
    raw = pq.read_table(small_project / "data/raw/transactions").to_pandas()
    out = pd.read_parquet(outputs(small_project)["transactions"])
    assert len(out) == len(raw)
    assert (out.drop(columns=[]).reset_index(drop=True)
            .equals(raw.sort_values(["tx_datetime", "transaction_id"])[out.columns]
                    .reset_index(drop=True).astype(out.dtypes.to_dict())))


# cells a bank's export writes for no value, and for a value, in each column
NO_VALUE_CELLS = {1: ("CARD", "-"), 2: ("TX_TIME", "-"), 3: ("AMOUNT_EUR", "-"),
                  4: ("AMOUNT_EUR", "NA"), 5: ("CARD", "NA"), 6: ("TERMINAL", " NULL "),
                  7: ("COUNTRY", "NULL"), 8: ("TX_TIME", ""), 9: ("COUNTRY", "NA")}


@pytest.mark.parametrize("null_texts, quarantined, countries", [
    # by default: a CSV reader's list ('NA', 'NULL', ''), and a category as written
    (None, {2: ("tx_datetime", "not_a_timestamp"), 3: ("tx_amount", "not_a_number"),
            4: ("tx_amount", "missing"), 5: ("customer_id", "missing"),
            6: ("terminal_id", "missing"), 8: ("tx_datetime", "missing")},
     {7: "NULL", 9: "NA"}),
    # listed: these texts are no value in every column, the category too; 'NA' is a value
    (["NULL", "-"], {1: ("customer_id", "missing"), 2: ("tx_datetime", "missing"),
                     3: ("tx_amount", "missing"), 4: ("tx_amount", "not_a_number"),
                     6: ("terminal_id", "missing"), 7: ("country", "missing"),
                     8: ("tx_datetime", "missing")},
     {9: "NA"})])
def test_null_texts_decide_what_reads_as_no_value_in_every_column(null_texts, quarantined,
                                                                   countries):
    """`ingest.null_texts` names the texts that are no value, for ids, times, numbers and
    categories alike (a row without a required value is quarantined as `missing`); a text
    the list does not hold is read as a value (a card 'NA', a country 'NA') or refused by its
    column's rule, never dropped. The empty text is no value always."""
    frame = good_frame(10).astype(object).assign(COUNTRY="BE")
    for row, (column, text) in NO_VALUE_CELLS.items():
        frame.loc[row - 1, column] = text
    rows = SourceRows(frame, [Path("x.csv")], np.zeros(10, int), np.arange(1, 11))
    params = IngestParams(columns=MAPPING, null_texts=null_texts, max_invalid_fraction=1,
                          attributes={"country": {"column": "COUNTRY", "type": "category"}})
    result = ingest_rows(rows, params, now=pd.Timestamp("2026-01-01"))
    q = result.quarantine
    assert dict(zip(q.source_row, zip(q.column, q.rule, strict=True), strict=True)) == quarantined
    written = result.transactions.set_index(result.transactions.transaction_id - 99)
    assert set(written.index) == set(range(1, 11)) - set(quarantined)
    assert {r: c for r, c in written.country.items() if c != "BE"} == countries
    for row in set(written.index) & {1, 5}:   # a card written '-' or 'NA' is that card
        assert written.customer_id[row] == key_of(frame.CARD[row - 1])


def test_with_null_texts_a_csv_null_and_a_parquet_null_are_one_value(tmp_path):
    """A source of CSV files that write NULL for no value and Parquet files with real nulls:
    with `ingest.null_texts: [NULL]` a nullable category, a nullable number and an id read
    both alike, so the same rows give the same frame from either format. By default the
    CSV's NULL category is a category of its own, one the Parquet rows never have."""
    from aif.data.ingest import read_source
    frame = good_frame(200).assign(COUNTRY="BE", VISITS=pd.array(range(200), "Int64"))
    frame.loc[[3, 17], "COUNTRY"], frame.loc[[5, 17], "VISITS"] = None, None
    frame = frame.astype({"CARD": "Int64"})
    frame.loc[40, "CARD"] = None
    as_csv, as_parquet = tmp_path / "csv", tmp_path / "parquet"
    as_csv.mkdir(), as_parquet.mkdir()
    frame.to_csv(as_csv / "bank.csv", index=False, na_rep="NULL")
    frame.to_parquet(as_parquet / "bank.parquet", index=False)

    def ingested(folder: Path, **params) -> pd.DataFrame:
        params = IngestParams(columns=MAPPING, reject_future=False, max_invalid_fraction=0.01,
                              attributes={"country": {"column": "COUNTRY", "type": "category",
                                                      "nullable": True},
                                          "visits": {"column": "VISITS", "type": "int",
                                                     "nullable": True}}, **params)
        result = ingest_rows(read_source(folder, params), params)
        assert result.quarantine[["source_row", "rule"]].values.tolist() == [[41, "missing"]]
        return result.transactions

    expected = ingested(as_parquet, null_texts=["NULL"])
    assert expected.country.isna().sum() == 2 and expected.visits.isna().sum() == 2
    pd.testing.assert_frame_equal(ingested(as_csv, null_texts=["NULL"]), expected)
    assert (ingested(as_csv).country == "NULL").sum() == 2   # the default: a category 'NULL'
    # the CSV reader takes the same list: 'NA' and 'NaN', not listed, are no numbers,
    # not nulls (Arrow reads 'NaN' as a float whatever its list: the column is read as text)
    odd = tmp_path / "odd"
    odd.mkdir()
    frame.head(3).assign(AMOUNT_EUR=["1.5", "NaN", "2"]).to_csv(odd / "x.csv", index=False)
    frame.iloc[3:6].assign(AMOUNT_EUR=["NA", "3", "4"]).to_csv(odd / "y.csv", index=False)
    params = IngestParams(columns=MAPPING, reject_future=False, null_texts=["NULL"],
                          max_invalid_fraction=1)
    quarantine = ingest_rows(read_source(odd, params), params).quarantine
    assert sorted(quarantine[["source_row", "rule"]].values.tolist()) == [
        [1, "not_a_number"], [2, "not_a_number"]]
