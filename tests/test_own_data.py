"""Bring your own data: any identifiers become keys by one rule, composite ids, a timestamp in
two columns or as epoch numbers, typed attributes, sensitive ids under a secret, and personal
data that never leaves ingest. Pure frames where the rule is the point (fast); the real CLI
and the real service on a realistic export (`aif card-export`) end to end."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_MODELLING, run, write_params
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aif.config.params import (
    CSV_NO_VALUE_TEXTS,
    IngestParams,
    ParamsError,
    load_params,
    params_from_text,
)
from aif.data.ingest import SourceRows, ingest_rows, read_source, source_plan
from aif.io import StageError
from aif.keys import (
    category_keys,
    composite_text,
    composite_texts,
    hashed_keys,
    id_text,
    key_of,
    keys_of_integers,
    keys_of_text,
)

NOW = pd.Timestamp("2026-01-01")
SECRET = b"a-test-secret-of-32-bytes-or-more!!"


def rows_of(frame: pd.DataFrame) -> SourceRows:
    return SourceRows(frame, [Path("x.csv")], np.zeros(len(frame), int),
                      np.arange(1, len(frame) + 1))


def export(n: int = 4, **overrides) -> pd.DataFrame:
    "Rows as a bank's export has them, read as text (CSV)."
    base = {"trans_num": [f"md5-{i % 2}" for i in range(n)],
            "cc_num": [str(4_000_000_000_000_000 + i % 3) for i in range(n)],
            "trans_date": ["2018-04-01"] * n, "trans_time": [f"10:00:{i:02d}" for i in range(n)],
            "merchant": [f"shop-{i}" for i in range(n)], "amt": [10.0 + i for i in range(n)],
            "is_fraud": ["0"] * n, "category": ["travel"] * n, "lat": [50.5] * n,
            "first": ["Jennifer"] * n, "ssn": ["123-45-6789"] * n}
    base.update(overrides)
    return pd.DataFrame({k: pd.array(v, dtype="string") if isinstance(v[0], str) else v
                         for k, v in base.items()})


MAPPING = {"transaction_id": ["trans_num", "cc_num"],
           "tx_datetime": {"join": ["trans_date", "trans_time"]},
           "customer_id": "cc_num", "terminal_id": "merchant", "tx_amount": "amt",
           "tx_fraud": "is_fraud"}


# --- the key rule ------------------------------------------------------------------------------

id_texts = st.one_of(st.integers(-2**70, 2**70).map(str), st.text(min_size=1, max_size=12),
                     st.integers(0, 10**6).map(lambda i: f"0{i}"),
                     # integers a float wrote (pandas, an integer column with a missing value)
                     st.builds(lambda i, zeros: f"{i}.{'0' * zeros}",
                               st.integers(-2**60, 2**60), st.integers(1, 3)))


def float_written(text: str) -> str:
    "The rule's reference (README): an integer written as a float, below 2^53, is its digits."
    m = re.fullmatch(r"(-?)(0|[1-9][0-9]*)\.0+", text)
    return str(int(m.group(1) + m.group(2))) if m and int(m.group(2)) < 2**53 else text


@settings(max_examples=200, deadline=None)
@given(st.lists(id_texts, min_size=1, max_size=40))
def test_the_vectorised_rule_is_the_one_value_rule(texts):
    texts = [t.strip() or "x" for t in texts]
    expected = [key_of(t) for t in texts]
    assert keys_of_text(pd.Series(texts)).tolist() == expected
    # many values take the vectorised path, a request's few the one-value rule: the same keys
    assert keys_of_text(pd.Series(texts * 20)).tolist() == expected * 20
    assert category_keys(texts * 20).tolist() == expected * 20
    assert category_keys(texts[:3]).tolist() == expected[:3]
    keys = keys_of_text(pd.Series(texts))
    assert ((keys >= 0) & (keys < 2**63)).all()
    for t, k in zip(map(float_written, texts), keys.tolist(), strict=True):
        if t.isascii() and t.isdigit() and (t == "0" or t[0] != "0") and int(t) < 2**63:
            assert k == int(t)
        else:   # anything else: SHA-256's first 8 bytes, top bit cleared (README, nbs/03a)
            assert k == int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") & (2**63 - 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=30))
def test_a_card_has_one_key_as_integer_or_as_text(cards):
    as_int = keys_of_integers(np.array(cards, np.uint64))
    assert as_int.tolist() == keys_of_text(pd.Series([str(c) for c in cards])).tolist()


def test_sensitive_ids_are_keyed_under_the_secret_whatever_their_form():
    card = "4263982640269299"
    keyed = keys_of_text(pd.Series([card]), SECRET)[0]
    expected = int.from_bytes(hmac.new(SECRET, card.encode(), hashlib.sha256).digest()[:8],
                              "big") & (2**63 - 1)
    assert keyed == expected != key_of(card) and keyed != int(card)
    assert keys_of_integers(np.array([int(card)]), SECRET)[0] == keyed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30),
       st.binary(min_size=1, max_size=100))
def test_keyed_ids_are_hmac_sha256_under_any_secret(texts, secret):
    # the hand-made HMAC of the vectorised path (inner and outer states copied) against the
    # standard library's, with secrets shorter and longer than SHA-256's 64-byte block
    expected = [int.from_bytes(hmac.digest(secret, t.encode(), "sha256")[:8], "big")
                & (2**63 - 1) for t in texts]
    assert hashed_keys(texts, secret).tolist() == expected
    expected = [int.from_bytes(hmac.digest(secret, float_written(t).encode(), "sha256")[:8],
                               "big") & (2**63 - 1) for t in texts]
    assert keys_of_text(pd.Series(texts * 20), secret).tolist() == expected * 20


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.text(max_size=6), min_size=2, max_size=3), max_size=20))
def test_composite_texts_of_a_batch_are_each_rows_json(rows):
    # quotes, backslashes and control characters in one part take every row the slow way
    assert composite_texts(rows) == [composite_text(r) for r in rows] == [
        json.dumps(list(map(float_written, r)), ensure_ascii=False, separators=(",", ":"))
        for r in rows]


def test_an_integer_a_float_wrote_is_that_integer_in_files_requests_and_under_the_secret(
        tmp_path):
    card = 4263982640269299
    for secret in (None, SECRET):   # as text (.0, .00), a float, an integer; a part of a pair
        keys = {keys_of_text(pd.Series([t] * 20), secret)[0] for t in
                (f"{card}.0", f"{card}.00", str(card))} | {key_of(f"{card}.0", secret)}
        assert keys == {keys_of_integers(np.array([card]), secret)[0]}
    assert composite_text(["a1", f"{card}.0"]) == composite_text(["a1", str(card)])
    assert id_text(f" {card}.0 ") == id_text(float(card)) == str(card)
    # not an integer a float wrote: kept as text (hashed), as the rule has always read it
    for text in ("0123.0", "1.50", "1.", ".0", "1e3", "+5.0", f"{2**53}.0"):
        assert key_of(text) == int.from_bytes(hashlib.sha256(text.encode()).digest()[:8],
                                              "big") & (2**63 - 1)
    # ingest: a CSV pandas wrote (a card column with a gap) beside a Parquet of integers and
    # one of floats: one card, one category, no collision of two raw texts
    frame = export(3, cc_num=[str(card)] * 3, category=["5411"] * 3)
    frame.assign(cc_num=[f"{card}.0", None, f"{card}.0"], trans_num=["a0", "a1", "a2"],
                 category=["5411.0"] * 3).to_csv(tmp_path / "a.csv", index=False)
    frame.assign(cc_num=np.full(3, card), trans_num=["p0", "p1", "p2"]).to_parquet(
        tmp_path / "b.parquet")
    frame.assign(cc_num=np.full(3, float(card)), trans_num=["f0", "f1", "f2"],
                 category=[5411.0] * 3).to_parquet(tmp_path / "c.parquet")
    ingest = IngestParams(columns=MAPPING, max_invalid_fraction=0.5, attributes={
        "merchant_category": {"column": "category", "type": "category", "values": ["5411"]}})
    result = ingest_rows(read_source(tmp_path, ingest), ingest, now=NOW)
    tx = result.transactions
    assert len(tx) == 8 and result.quarantine.rule.tolist() == ["missing"]
    assert set(tx.customer_id) == {card} and set(tx.merchant_category) == {"5411"}
    # a declared value written as a float is the integer too, offline and online
    ingest = IngestParams(columns=MAPPING, max_invalid_fraction=0.5, attributes={
        "merchant_category": {"column": "category", "type": "category", "values": ["5411.0"]}})
    assert len(ingest_rows(read_source(tmp_path, ingest), ingest, now=NOW).transactions) == 8
    # online: the same card and category, sent as the CSV has them
    from aif.serve.schema import Requests
    requests = Requests(IngestParams(columns=MAPPING, attributes={
        "category": {"column": "category", "type": "category", "values": ["5411.0"]}}))
    sent = {"transaction_id": ["a1", f"{card}.0"], "tx_datetime": "2018-09-17T00:00:01",
            "customer_id": f"{card}.0", "terminal_id": "shop-1", "tx_amount": 12.5,
            "category": "5411.0"}
    columns = requests.score_columns(json.dumps(sent).encode()).columns
    assert columns["customer_id"].tolist() == [card]
    assert columns["transaction_id"].tolist() == [key_of(composite_text(["a1", str(card)]))]
    assert columns["category"].tolist() == category_keys(["5411"]).tolist()


# --- serving: the fast decoding of a request is pydantic's ------------------------------------

REQUEST_MAPPING = IngestParams(columns=MAPPING, sensitive_ids=["customer_id"], attributes={
    "category": {"column": "category", "type": "category"},
    "lat": {"column": "lat", "type": "float", "min": -90, "max": 90},
    "visits": {"column": "visits", "type": "int", "nullable": True, "min": 0},
    "online": {"column": "online", "type": "bool"}})
SPACES = " \t\n\u00a0\u3000\u0085\u001c\u2028"   # pydantic strips some, Python all
tricky_text = st.text(st.sampled_from("ab7_-\"\\" + SPACES), min_size=0, max_size=6)
clean_text = st.text(st.sampled_from("ab7_-"), min_size=1, max_size=6)
TO_STRIP = st.builds(lambda before, core, after: before + core + after,
                     st.text(SPACES, max_size=2), clean_text, st.text(SPACES, max_size=2))
an_id = st.one_of(st.integers(-2**65, 2**65), clean_text, tricky_text, st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False))
a_time = st.one_of(
    st.builds(lambda t, sep, fraction: t.isoformat(sep=sep, timespec="seconds") + fraction,
              st.datetimes(), st.sampled_from("Tt _"),
              st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(
                  lambda digits: "." + digits))),
    st.sampled_from(["2018-09-17", "2018-09-17T00:00", "2018-09-17T00:00:01Z", "now",
                     "2018-09-17T00:00:01,5", "2018-09-17T24:00:00", " 2018-09-17T00:00:01"]))
a_number = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 2**70),
                     st.booleans(), st.just("1.5"), st.none())


def valid_transactions() -> st.SearchStrategy:
    "Rows every value of which both decoders take unchanged: the fast path must take them."
    return st.builds(lambda i, t, c, m, amount, cat, lat, visits, online: {
        "transaction_id": [i, c], "tx_datetime": t, "customer_id": c, "terminal_id": m,
        "tx_amount": amount, "category": cat, "lat": lat, "visits": visits, "online": online},
        st.one_of(clean_text, st.integers(0, 2**62)),
        # 'T' or a space, as ingest reads it ('t' is RFC 3339's, which pandas refuses)
        st.builds(lambda t, sep: t.isoformat(sep=sep), st.datetimes(), st.sampled_from("T ")),
        clean_text, st.one_of(clean_text, st.integers(-9, 2**64 - 1)),
        st.floats(0, REQUEST_MAPPING.max_amount),
        clean_text, st.floats(-90, 90), st.one_of(st.none(), st.integers(0, 2**62)),
        st.booleans())


TRICKY = {"transaction_id": st.one_of(st.lists(an_id, min_size=1, max_size=3), an_id),
          "customer_id": st.one_of(TO_STRIP, an_id), "terminal_id": st.one_of(TO_STRIP, an_id),
          "tx_datetime": a_time, "tx_amount": a_number, "lat": a_number,
          "category": st.one_of(TO_STRIP, tricky_text, an_id),
          "visits": st.one_of(st.integers(-3, 2**65), st.floats(0, 3), st.none()),
          "online": st.one_of(st.integers(0, 1), st.none())}


@st.composite
def transactions(draw) -> dict:
    "A valid row with one value made tricky: to strip, rounded, refused; or one field missing."
    row = draw(valid_transactions())
    name = draw(st.sampled_from(sorted(TRICKY)))
    row[name] = draw(TRICKY[name])
    change = draw(st.sampled_from(["", "", "", "", "", "", "missing", "extra"]))
    if change == "missing":
        del row[draw(st.sampled_from(sorted(row)))]
    elif change == "extra":
        row["extra"] = 1
    return row


def decoded(requests, raw: bytes, fast: bool):
    from fastapi.exceptions import RequestValidationError
    try:
        return (requests.score_columns(raw) if fast else
                requests.columns(requests.score_body(raw)))
    except RequestValidationError:
        return "refused"


def same_columns(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return list(a) == list(b) and all(a[c].dtype == b[c].dtype and np.array_equal(
        a[c], b[c], equal_nan=a[c].dtype.kind == "f") for c in a)


def plain_row(**changes) -> dict:
    return {"transaction_id": ["a1", "4263982640269299"], "tx_datetime": "2018-09-17T00:00:01",
            "customer_id": "4263982640269299", "terminal_id": "shop-1", "tx_amount": 12.5,
            "category": "travel", "lat": 50.5, "visits": None, "online": True, **changes}


@settings(max_examples=300, deadline=None)
@given(st.builds(lambda valid, tricky, at: [*valid[:at], tricky, *valid[at:]],
                 st.lists(valid_transactions(), max_size=3), st.one_of(transactions(),
                                                                       valid_transactions()),
                 st.integers(0, 3)), st.booleans(), st.booleans())
# where msgspec alone would differ: text pydantic strips, blank text, a seventh digit it rounds
@example([plain_row(category=" travel")], True, True)
@example([plain_row(terminal_id="shop-1\u3000")], False, False)
@example([plain_row(customer_id=" ")], False, True)
@example([plain_row(transaction_id=["a1 ", "4263982640269299"])], True, True)
@example([plain_row(tx_datetime="2018-09-17T00:00:01.1234567")], False, True)
@example([plain_row(tx_datetime="2018-09-17T00:00:01.123456000")], True, True)
@example([plain_row(tx_amount=-0.5)], True, True)   # and what both must refuse
@example([plain_row(lat=90.5)], False, True)
@example([plain_row(visits=2**63)], False, True)
@example([plain_row(extra="x")], True, True)
def test_the_fast_request_decoder_accepts_and_keys_exactly_what_pydantic_does(rows, single,
                                                                              ascii_only):
    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    body = rows[0] if single and len(rows) == 1 else {"transactions": rows}
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    fast = decoded(requests, raw, fast=True)
    slow = decoded(requests, raw, fast=False)
    assert same_columns(fast if isinstance(fast, str) else fast.columns, slow), raw[:400]


def test_a_time_is_taken_to_the_microsecond_online_as_offline_and_never_cut():
    """Zeros past the sixth digit of a second change nothing: ingest and the service take
    them; any other digit there is quarantined by ingest and refused (422) by the service."""
    from fastapi.exceptions import RequestValidationError

    from aif.data.ingest import _parse_datetime
    from aif.serve.schema import Requests
    exact, zeros, finer = ("2018-09-17T00:00:01.123456", "2018-09-17T00:00:01.123456000",
                           "2018-09-17T00:00:01.1234567")
    offline, rules = _parse_datetime(pd.Series([exact, zeros, finer]), IngestParams(), "test")
    assert offline[0] == offline[1] and rules.to_dict() == {2: "sub_microsecond"}
    # the simulator's mapping (the naive ISO time only, pydantic's reading) and the export's
    # (a date and a time joined: ingest's own rule)
    for requests, said in ((Requests(IngestParams()), "more than 6 digits"),
                           (Requests(REQUEST_MAPPING, SECRET), "past the microsecond")):
        row = plain_row() if requests.plan.sensitive else {
            "transaction_id": 1, "customer_id": 2, "terminal_id": 3, "tx_amount": 1.0}

        def online(time: str, requests=requests, row=row):
            raw = json.dumps({**row, "tx_datetime": time}).encode()
            return requests.score_columns(raw).columns["tx_datetime"].tolist()

        assert online(zeros) == online(exact) == [offline[0].value // 1000]
        with pytest.raises(RequestValidationError) as refused:
            online(finer)
        (error,) = refused.value.errors()
        assert error["loc"] == ("body", "tx_datetime") and said in error["msg"]


EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
ZONES = ("Europe/Brussels", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC")
TIME_FORMS = ("s", "ms", "us", "offset", "format")


def time_as_exported(us: int, form: str, offset_minutes: int) -> tuple[list[str], object]:
    """An instant (`us` since 1970) as an export writes it (its CSV cells) and as a client
    sends it (JSON): epoch numbers (an integer, or text with its fraction), ISO text with an
    offset, or a date and a time in two columns by a format."""
    if form in _EPOCH_SCALES:
        scale = _EPOCH_SCALES[form]
        sign, magnitude = ("-" if us < 0 else ""), abs(us)
        if magnitude % scale == 0:
            return [str(us // scale)], us // scale
        text = f"{sign}{magnitude // scale}.{magnitude % scale:0{len(str(scale)) - 1}d}"
        return [text], text
    when = EPOCH_UTC + timedelta(microseconds=us)
    if form == "offset":
        text = when.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat()
        return [text], text
    parts = [when.strftime("%d/%m/%Y"), when.strftime("%H:%M:%S.%f")]   # as naive local
    return parts, parts


_EPOCH_SCALES = {"s": 10**6, "ms": 10**3, "us": 1}


def export_time_params(form: str, zone: str) -> IngestParams:
    "An export's time in `form`, any date taken (the future too)."
    if form in _EPOCH_SCALES:
        return IngestParams(columns={"tx_datetime": "when"}, datetime_unit=form, timezone=zone,
                            reject_future=False)
    if form == "offset":
        return IngestParams(columns={"tx_datetime": "when"}, timezone=zone, reject_future=False)
    return IngestParams(columns={"tx_datetime": {"join": ["day", "clock"],
                                                 "format": "%d/%m/%Y %H:%M:%S.%f"}},
                        reject_future=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5 * 10**15, 10**16),   # microseconds: years 1811-2286
                min_size=1, max_size=6, unique=True),
       st.sampled_from(ZONES), st.sampled_from(TIME_FORMS),
       st.lists(st.integers(-14 * 60, 14 * 60), min_size=6, max_size=6), st.booleans())
def test_a_time_sent_as_the_export_has_it_is_the_time_ingest_reads_from_the_export(
        instants, zone, form, offsets, whole):
    """Epoch numbers (integers, text with a fraction), ISO text with an offset, a date and a
    time in two columns by a format: the service reads a request's time as ingest reads the
    export's CSV, to the microsecond, on both decoders; and the naive local time ingest
    wrote, which a client replaying the data sends, reads as the same."""
    params = export_time_params(form, zone)
    if whole and form in _EPOCH_SCALES:   # epochs sent as integers (numpy's way online)
        instants = [us - us % _EPOCH_SCALES[form] for us in instants]
    written = [time_as_exported(us, form, o)
               for us, o in zip(instants, offsets[:len(instants)], strict=True)]
    cells, sent = zip(*written, strict=True)
    columns = ["when"] if len(cells[0]) == 1 else ["day", "clock"]
    assert_read_as_ingest_reads(params, {c: [cell[i] for cell in cells]
                                         for i, c in enumerate(columns)}, list(sent))


def assert_read_as_ingest_reads(params: IngestParams, cells: dict[str, list], sent: list):
    """Ingest reads the time `cells` of a CSV without quarantining one; the service reads
    `sent`, and the naive local times ingest wrote, as the same, on both decoders, in a
    batch and alone."""
    import tempfile

    from aif.serve.schema import Requests
    n = len(sent)
    frame = pd.DataFrame({"transaction_id": range(n), "customer_id": 7, "terminal_id": 9,
                          "tx_amount": 1.5, "tx_fraud": 0, **cells})
    with tempfile.TemporaryDirectory() as folder:
        frame.to_csv(Path(folder) / "export.csv", index=False)
        result = ingest_rows(read_source(Path(folder), params), params, now=NOW)
    assert len(result.quarantine) == 0, result.quarantine
    offline = result.transactions.set_index("transaction_id").tx_datetime
    expected = offline.loc[range(n)].to_numpy().astype("datetime64[us]").view("i8")

    requests = Requests(params)
    rows = [{"transaction_id": i, "tx_datetime": t, "customer_id": 7, "terminal_id": 9,
             "tx_amount": 1.5} for i, t in enumerate(sent)]
    replay = [{**row, "tx_datetime": offline[i].isoformat()} for i, row in enumerate(rows)]
    for body in ({"transactions": rows}, {"transactions": replay}):
        raw = json.dumps(body).encode()
        for fast in (True, False):
            read = decoded(requests, raw, fast)
            assert not isinstance(read, str), (raw, read)
            assert (read if fast is False else read.columns)["tx_datetime"].tolist() == \
                expected.tolist(), raw
    single = requests.score_columns(json.dumps(rows[0]).encode())
    assert single.columns["tx_datetime"].tolist() == expected[:1].tolist()


@pytest.mark.parametrize(("fmt", "sent"), [
    ("%Y-%m-%d %I:%M:%S", "2024-04-13 12:30:00"),    # 12 o'clock is 00:30 by %I: not ISO's
    ("%Y-%m-%d %H:%M:%S%z", "2024-04-13 23:20:00+0200"),
    ("%d/%m/%Y %H:%M", "13/04/2024 23:20"),
])
def test_a_time_by_the_export_format_is_read_as_ingest_reads_it(fmt, sent):
    assert_read_as_ingest_reads(IngestParams(datetime_format=fmt, timezone="Europe/Brussels"),
                                {"tx_datetime": [sent]}, [sent])


def test_a_time_with_spaces_around_its_parts_is_read_as_ingest_reads_the_cells():
    """Ingest strips a date and a time before joining them, by Python's `str.strip`; so does
    the service, on pydantic's path (msgspec's takes no text to strip), whose own strip keeps
    \\x1c-\\x1f: in a batch beside a row whose parts have none, and alone."""
    padded, plain = ["\x1c 13/04/2024", "23:20:00.5\t\x1f"], ["14/04/2024", "00:00:01.25"]
    assert_read_as_ingest_reads(export_time_params("format", "Europe/Brussels"),
                                {"day": [padded[0], plain[0]], "clock": [padded[1], plain[1]]},
                                [padded, plain])


@pytest.mark.parametrize(("form", "sent", "rule"), [
    ("s", 1713049900.5, "not_a_time"),             # a JSON number's digits are not all kept
    ("us", 9007199254740993.0, "not_a_time"),        # ... and this one has lost its last one
    ("s", "1.5e9", "not_an_integer"),
    ("s", "NULL", "missing"),
    ("s", "1713049900.1234567", "sub_microsecond"),
    ("ms", "2024-02-31", "not_a_timestamp"),
    ("s", 10**20, "out_of_range"),
    ("s", True, "not_a_time"),
    ("offset", "2024-04-13T23:20:00.1234561+02:00", "sub_microsecond"),
    ("offset", "13/04/2024 23:20", "not_a_timestamp"),
    ("offset", "2024-04-13T23:20:00z", "not_a_timestamp"),   # as pandas, whatever RFC 3339 says
    ("format", ["13/04/2024", "25:20:00.0"], "not_a_timestamp"),
    ("format", "2024-04-13T23:20:00+02:00", "timezone_aware"),   # no ingest.timezone
    ("format", ["13/04/2024"], "not_a_time"),
    ("format", ["13/04/2024", " "], "not_a_time"),   # ingest: missing (not its midnight)
    ("format", ["13/04/2024", "NULL\x1f"], "missing"),   # stripped as ingest strips, no value
])
def test_a_time_the_export_rule_refuses_is_a_422_naming_the_row_and_the_rule(form, sent, rule):
    """Where ingest would quarantine the row, the service answers 422 at the row's
    `tx_datetime` with ingest's rule: one good row beside it changes nothing."""
    from fastapi.exceptions import RequestValidationError

    from aif.serve.schema import Requests
    requests = Requests(export_time_params(form, "Europe/Brussels"))
    good = {"transaction_id": 1, "tx_datetime": "2024-04-13T23:20:00", "customer_id": 7,
            "terminal_id": 9, "tx_amount": 1.5}
    for fast in (True, False):
        raw = json.dumps({"transactions": [good, {**good, "transaction_id": 2,
                                                  "tx_datetime": sent}]}).encode()
        with pytest.raises(RequestValidationError) as refused:
            requests.score_columns(raw) if fast else requests.columns(requests.score_body(raw))
        (error,) = refused.value.errors()
        assert error["loc"] == ("body", "transactions", 1, "tx_datetime"), error
        assert error["type"] == rule, error


@pytest.mark.parametrize("fast", [True, False])
def test_an_amount_ingest_finds_implausible_is_refused_online(fast):
    """`ingest.max_amount` holds online too: above it, 422 naming `tx_amount` (one such amount
    would stay in its card's windows for weeks); at it, taken."""
    from fastapi.exceptions import RequestValidationError

    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    limit = REQUEST_MAPPING.max_amount
    category = "travel" if fast else " travel"   # pydantic decides it

    def amounts(amount) -> list[float]:
        raw = json.dumps(plain_row(tx_amount=amount, category=category)).encode()
        return requests.score_columns(raw).columns["tx_amount"].tolist()

    assert amounts(limit) == [limit]
    for implausible in (limit * 1.0001, 1e308):
        with pytest.raises(RequestValidationError) as refused:
            amounts(implausible)
        (error,) = refused.value.errors()
        assert error["loc"] == ("body", "tx_amount"), error


@pytest.mark.parametrize("text", ["shop-1\x1f", "\x1cshop-1 ", "shop-1\u0085", "\u3000shop-1",
                                  "\u2028shop-1\t"])
def test_an_id_with_odd_spaces_gets_the_key_ingest_gives_it(text):
    """Ingest strips ids as Python does, and so does the service, on either decoder: a space
    pydantic alone would keep (\\x1c-\\x1f) would make another card, silently."""
    from aif.data.ingest import parse_ids
    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    offline, rules, _ = parse_ids([pd.Series([text], dtype="string")])
    raw = json.dumps(plain_row(terminal_id=text)).encode()
    assert rules.empty and requests.score_columns(raw).columns["terminal_id"].tolist() == \
        offline.tolist() == parse_ids([pd.Series(["shop-1"], dtype="string")])[0].tolist()


@pytest.mark.parametrize("text", ["NULL", " n/a ", "NaN", "NA"])
def test_an_id_that_reads_as_no_value_is_missing_offline_and_refused_online(text):
    """'NULL', 'N/A', 'NaN' in an id column are how a database or a spreadsheet writes no id:
    ingest quarantines the row (`missing`, as an empty cell or a Parquet null), and /score
    and /labels refuse it (422 naming the field), on either decoder. Read as a card, it
    pooled every row without one into a single history. A category keeps such a text."""
    from fastapi.exceptions import RequestValidationError

    from aif.data.ingest import parse_attribute, parse_ids
    from aif.schema import Attribute
    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    for parts in ([pd.Series([text, "7"], dtype="string")],
                  [pd.Series(["a1", "a2"], dtype="string"), pd.Series(["7", text], dtype="string")],
                  [pd.Series([text, None, ""], dtype=object)]):
        _, rules, _ = parse_ids(parts)
        assert set(rules) == {"missing"}, (parts, rules)
    for field, value in (("customer_id", text), ("terminal_id", text),
                         ("transaction_id", ["a1", text])):
        for category in ("travel", " travel"):   # msgspec's path, then pydantic's alone
            raw = json.dumps(plain_row(**{field: value}, category=category)).encode()
            with pytest.raises(RequestValidationError) as refused:
                requests.score_columns(raw)
            (error,) = refused.value.errors()
            assert error["loc"] == ("body", field) and error["type"] == "no_value", error
    # in a batch, each row's field, as pydantic names a batch's other errors
    batch = [plain_row(transaction_id=["a1", "1"]),
             plain_row(transaction_id=["a2", "1"], customer_id=text, terminal_id=text)]
    with pytest.raises(RequestValidationError) as refused:
        requests.score_columns(json.dumps({"transactions": batch}).encode())
    assert [e["loc"] for e in refused.value.errors()] == [
        ("body", "transactions", 1, "customer_id"), ("body", "transactions", 1, "terminal_id")]
    for body, where in (({"transaction_id": [text, "7"], "tx_fraud": 1},
                         ("body", "transaction_id")),
                        ({"labels": [{"transaction_id": ["a1", "7"], "tx_fraud": 1},
                                     {"transaction_id": [text, "7"], "tx_fraud": 1}]},
                         ("body", "labels", 1, "transaction_id"))):
        with pytest.raises(RequestValidationError) as refused:
            requests.label_columns(requests.labels_body(json.dumps(body).encode()))
        assert [e["loc"] for e in refused.value.errors()] == [where]
    # a category is kept as written, offline and online alike
    offline, rules = parse_attribute(pd.Series([text], dtype="string"),
                                     Attribute("category", "category", "category"))
    raw = json.dumps(plain_row(category=text)).encode()
    assert rules.empty and requests.score_columns(raw).columns["category"].tolist() == \
        requests.score_columns(json.dumps(plain_row(category=offline[0])).encode()
                               ).columns["category"].tolist()


def test_a_bad_label_gets_the_errors_of_the_shape_it_was_sent_in():
    """/labels takes one label or `{"labels": [...]}`: a 422 names what is wrong in the shape
    the client sent, not also the other shape's missing fields."""
    from fastapi.exceptions import RequestValidationError

    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    for body, where in (({"transaction_id": ["a1", "7"], "tx_fraud": True}, ("body", "tx_fraud")),
                        ({"labels": [{"transaction_id": ["a1", "7"], "tx_fraud": 2}]},
                         ("body", "labels", 0, "tx_fraud")),
                        ({"transaction_id": ["a1"], "tx_fraud": 1}, ("body", "transaction_id"))):
        with pytest.raises(RequestValidationError) as refused:
            requests.labels_body(json.dumps(body).encode())
        assert [e["loc"] for e in refused.value.errors()] == [where], refused.value.errors()


def test_a_category_ingest_finds_unknown_is_refused_online():
    """An attribute's declared values hold online too: another value gets 422 naming the
    attribute (ingest quarantines it as unknown_category); a declared one, stripped or not,
    takes the key ingest gives it."""
    from fastapi.exceptions import RequestValidationError

    from aif.keys import keys_of_text
    from aif.serve.schema import Requests
    declared = IngestParams(columns=MAPPING, sensitive_ids=["customer_id"], attributes={
        **REQUEST_MAPPING.attributes,
        "category": {"column": "category", "type": "category", "values": ["travel", "food"]}})
    requests = Requests(declared, SECRET)

    def category(value) -> list[int]:
        raw = json.dumps(plain_row(category=value)).encode()
        return requests.score_columns(raw).columns["category"].tolist()

    assert category("travel") == category(" travel ") == category("travel\x1f") == \
        category("\x1ctravel") == keys_of_text(pd.Series(["travel"])).tolist()
    for unknown in ("zzz", "TRAVEL", "travel2"):
        with pytest.raises(RequestValidationError) as refused:
            category(unknown)
        (error,) = refused.value.errors()
        assert error["loc"] == ("body", "category") and error["type"] == "unknown_category"
        assert "food, travel" in error["msg"] and unknown not in error["msg"]
    # a nullable category's empty text is no value, as ingest reads an empty cell (a 422)
    nullable = IngestParams(columns=MAPPING, sensitive_ids=["customer_id"], attributes={
        **REQUEST_MAPPING.attributes, "category": {"column": "category", "type": "category",
                                                   "nullable": True}})
    requests = Requests(nullable, SECRET)
    assert category("") == category("   ") == category(None)


@pytest.mark.parametrize("spaced", [False, True])   # msgspec's path, and pydantic's
def test_a_transaction_twice_in_a_batch_is_refused_at_the_row_that_repeats_it(spaced):
    from fastapi.exceptions import RequestValidationError

    from aif.serve.schema import Requests
    rows = [plain_row(transaction_id=[f"t{i}", "4263982640269299"]) for i in range(4)]
    # t1 again: as sent before, or written otherwise (spaces: pydantic's path strips them)
    rows[3]["transaction_id"] = [" t1 ", 4263982640269299] if spaced else rows[1]["transaction_id"]
    with pytest.raises(RequestValidationError) as refused:
        Requests(REQUEST_MAPPING, SECRET).score_columns(
            json.dumps({"transactions": rows}).encode())
    (error,) = refused.value.errors()
    assert error["loc"] == ("body", "transactions", 3, "transaction_id")
    assert error["type"] == "duplicate_id" and "row 3 is row 1 again" in error["msg"]

@pytest.mark.parametrize("fast", [True, False])
def test_the_debug_log_shows_a_sensitive_id_as_its_key_never_raw(fast):
    """`AIF_LOG_LEVEL=DEBUG` logs a sample of each request: a card number, and a composite id
    holding it, are there as their keys, the other fields as sent."""
    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    row = plain_row(category=" travel" if not fast else "travel")   # pydantic decides it
    body = requests.score_columns(json.dumps({"transactions": [row, row | {
        "transaction_id": ["a2", row["customer_id"]]}]}).encode())
    sample = body.sample()
    logged = json.dumps(sample)
    assert row["customer_id"] not in logged and "a1" not in logged
    assert [r["customer_id"] for r in sample] == [f"key {k}" for k in body.columns["customer_id"]]
    assert [r["transaction_id"] for r in sample] == [
        f"key {k}" for k in body.columns["transaction_id"]]
    assert sample[0]["terminal_id"] == "shop-1" and sample[1]["tx_amount"] == 12.5


@settings(max_examples=50, deadline=None)
@given(st.lists(valid_transactions(), min_size=1, max_size=30))
def test_the_fast_path_takes_a_plain_batch(rows):
    from aif.serve.schema import Requests
    requests = Requests(REQUEST_MAPPING, SECRET)
    for i, row in enumerate(rows):   # ids unique within the batch
        row["transaction_id"] = [f"tx{i}", row["customer_id"]]
    raw = json.dumps({"transactions": rows}).encode()
    decoded_rows = requests.fast_rows(raw)
    assert decoded_rows is not None and requests.fast_values(decoded_rows) is not None, raw
    assert same_columns(requests.score_columns(raw).columns,
                        requests.columns(requests.score_body(raw)))



@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(id_texts, min_size=1, max_size=30), min_size=1, max_size=4),
       st.integers(1, 40))
def test_terminal_keys_from_the_cache_are_the_rule_s(batches, limit):
    """A terminal's key comes from a per-process cache after its first request: the key the
    rule gives, whatever came before and however small the cache (emptied when full)."""
    from unittest import mock

    from aif.serve import schema
    requests = schema.Requests(REQUEST_MAPPING, SECRET)
    largest = 0   # the cache holds at most the limit, or one batch's ids if more
    with mock.patch.object(schema, "ENTITY_KEY_CACHE", limit):
        for texts in batches:
            texts = [t.strip() or "x" for t in texts]
            largest = max(largest, len(set(texts)))
            assert requests.keys("terminal_id", texts).tolist() == [key_of(t) for t in texts]
            assert len(requests.entity_keys) <= max(limit, largest)
    # a sensitive id is keyed under the secret and never kept
    cards = [f"4{i:018d}" for i in range(len(batches[0]))]
    assert requests.keys("customer_id", cards).tolist() == [key_of(t, SECRET) for t in cards]
    assert not set(cards) & set(requests.entity_keys)


# --- ingest: mappings, attributes, PII --------------------------------------------------------

def test_an_export_with_composite_ids_split_times_and_attributes():
    params = IngestParams(columns=MAPPING, attributes={
        "merchant_category": {"column": "category", "type": "category", "values": ["travel"]},
        "customer_lat": {"column": "lat", "type": "float", "min": -90, "max": 90}})
    result = ingest_rows(rows_of(export()), params, now=NOW)
    tx = result.transactions
    assert len(tx) == 4 and result.quarantine.empty
    # ids: md5 alone repeats, with the card it is unique; each is the key of its part list
    assert tx.transaction_id.tolist() == [
        key_of(composite_text([f"md5-{i % 2}", str(4_000_000_000_000_000 + i % 3)]))
        for i in range(4)]
    assert tx.customer_id.tolist() == [4_000_000_000_000_000 + i % 3 for i in range(4)]
    assert tx.terminal_id.tolist() == [key_of(f"shop-{i}") for i in range(4)]
    assert tx.tx_datetime.astype(str).tolist() == [f"2018-04-01 10:00:{i:02d}" for i in range(4)]
    assert list(tx.columns[-2:]) == ["merchant_category", "customer_lat"]
    assert tx.merchant_category.tolist() == ["travel"] * 4 and tx.customer_lat.dtype == "float64"
    assert "first" not in tx.columns and "ssn" not in tx.columns   # PII: never read past ingest
    # the id map gives every hashed key its raw id back (the card numbers keep their value)
    merchants = result.id_map[result.id_map.field == "terminal_id"]
    assert dict(zip(merchants.key, merchants.raw, strict=True)) == {
        key_of(f"shop-{i}"): f"shop-{i}" for i in range(4)}
    assert set(result.id_map.field) == {"transaction_id", "terminal_id"}


def test_broken_attributes_are_quarantined_with_their_rule():
    params = IngestParams(columns=MAPPING, attributes={
        "merchant_category": {"column": "category", "type": "category", "values": ["travel"]},
        "customer_lat": {"column": "lat", "type": "float", "min": -90, "max": 90},
        "channel": {"column": "channel", "type": "int", "nullable": True},
        "online": {"column": "online", "type": "bool"}})
    frame = export(6, category=["travel", "spaceflight", "travel", None, "travel", "travel"],
                   lat=[50.5, 50.5, 91.0, 50.5, 50.5, 50.5],
                   channel=["1", "2", "3", "4", None, "2.5"],
                   online=["yes", "no", "true", "0", "1", "maybe"])
    result = ingest_rows(rows_of(frame), params, now=NOW)
    q = result.quarantine
    rules = dict(zip(q.source_row, zip(q.column, q.rule, strict=True), strict=True))
    assert rules == {2: ("merchant_category", "unknown_category"),
                     3: ("customer_lat", "out_of_range"), 4: ("merchant_category", "missing"),
                     6: ("channel", "not_an_integer")}
    kept = result.transactions.sort_values("tx_datetime")
    assert kept.channel.tolist()[:1] == [1] and kept.channel.isna().tolist() == [False, True]
    assert kept.online.tolist() == [True, True]
    # allowed values bound a category, min and max a number: the other way round is refused
    for wrong, said in (({"type": "int", "values": [1, 2]}, "values lists"),
                        ({"type": "category", "min": 1}, "min and max")):
        with pytest.raises(ParamsError, match=said):
            ingest_rows(rows_of(frame), IngestParams(columns=MAPPING, attributes={
                "channel": {"column": "channel", **wrong}}), now=NOW)


def test_epoch_timestamps_are_instants_in_the_zone():
    frame = export(2).drop(columns=["trans_date", "trans_time"]).assign(
        unix_time=["1522576800", "1522576801"])   # 2018-04-01 10:00 UTC
    columns = {**MAPPING, "tx_datetime": "unix_time"}
    with pytest.raises(ParamsError, match="epoch numbers are instants; set ingest.timezone"):
        IngestParams(columns=columns, datetime_unit="s")
    result = ingest_rows(rows_of(frame), IngestParams(columns=columns, datetime_unit="s",
                                                      timezone="Europe/Brussels"), now=NOW)
    assert result.transactions.tx_datetime.astype(str).tolist() == [
        "2018-04-01 12:00:00", "2018-04-01 12:00:01"]
    ms = frame.assign(unix_time=["1522576800000", "1522576800001"])
    result = ingest_rows(rows_of(ms), IngestParams(columns=columns, datetime_unit="ms",
                                                   timezone="UTC"), now=NOW)
    assert result.transactions.tx_datetime.tolist() == [
        pd.Timestamp("2018-04-01 10:00:00"), pd.Timestamp("2018-04-01 10:00:00.001")]
    # a date where an epoch is expected is no timestamp, whatever it is as a number
    dated = frame.assign(unix_time=["1522576800", "2018-02-31"])
    result = ingest_rows(rows_of(dated), IngestParams(columns=columns, datetime_unit="s",
                                                      timezone="UTC"), now=NOW)
    assert result.quarantine[["column", "rule"]].values.tolist() == [
        ["tx_datetime", "not_a_timestamp"]]


def test_a_date_beside_a_blank_time_is_missing_not_its_midnight():
    frame = export(3, trans_time=["10:00:00", " ", ""])
    result = ingest_rows(rows_of(frame), IngestParams(columns=MAPPING), now=NOW)
    assert len(result.transactions) == 1
    assert result.quarantine[["column", "rule"]].values.tolist() == [
        ["tx_datetime", "missing"]] * 2


def test_a_time_written_as_now_is_not_the_time_ingest_ran():
    """pandas reads 'now' and 'today' as the clock's time, under any format: ingest
    quarantines them (a row no two runs would write alike), and the service refuses them."""
    from fastapi.exceptions import RequestValidationError

    from aif.serve.schema import Requests
    frame = pd.DataFrame({"transaction_id": ["1", "2", "3"],
                          "tx_datetime": ["2018-04-01 10:00:00", "now", " today "],
                          "customer_id": "7", "terminal_id": "9", "tx_amount": "1.5",
                          "tx_fraud": "0"}, dtype="string")
    for params in (IngestParams(), IngestParams(datetime_format="%Y-%m-%d %H:%M:%S"),
                   IngestParams(timezone="Europe/Brussels")):
        result = ingest_rows(rows_of(frame), params, now=pd.Timestamp("2100-01-01"))
        assert result.transactions.tx_datetime.tolist() == [pd.Timestamp("2018-04-01 10:00")]
        assert result.quarantine[["column", "rule"]].values.tolist() == [
            ["tx_datetime", "not_a_timestamp"]] * 2
        requests = Requests(params)
        raw = json.dumps({"transaction_id": 2, "tx_datetime": "now", "customer_id": 7,
                          "terminal_id": 9, "tx_amount": 1.5}).encode()
        with pytest.raises(RequestValidationError) as refused:
            requests.score_columns(raw)
        assert refused.value.errors()[0]["loc"] == ("body", "tx_datetime")


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**62) // 1000, (2**62) // 1000 - 1), st.sampled_from(["s", "ms", "us"]))
def test_an_epoch_with_a_fraction_is_read_to_the_microsecond_from_its_digits(us, unit):
    """`1713049900.123456` seconds is that microsecond exactly (it was not_an_integer), never
    through a float; a nonzero digit past the microsecond is sub_microsecond."""
    from aif.data.ingest import _parse_epoch
    scale = {"s": 10**6, "ms": 10**3, "us": 1}[unit]
    sign, magnitude = ("-" if us < 0 else ""), abs(us)
    digits = len(str(scale)) - 1
    text = f"{sign}{magnitude // scale}" + (f".{magnitude % scale:0{digits}d}" if digits else "")
    finer = text + ("" if digits else ".") + "00000001"
    params = IngestParams(datetime_unit=unit, timezone="UTC")
    padded = text + "0" if digits else text   # a trailing zero of the fraction changes nothing
    values, rules = _parse_epoch(pd.Series([text, padded, finer], dtype="string"), params,
                                 "test")
    expected = np.datetime64(us, "us")
    if np.datetime64("0001-01-02") <= expected <= np.datetime64("9999-12-30"):
        assert rules.to_dict() == {2: "sub_microsecond"}
        assert values[0].to_datetime64() == values[1].to_datetime64() == expected
    else:
        assert rules[0] == rules[1] == "out_of_range"


def test_sensitive_ids_need_the_secret_and_are_never_stored_raw(monkeypatch):
    params = IngestParams(columns=MAPPING, sensitive_ids=("customer_id",))
    monkeypatch.delenv("AIF_ID_HASH_KEY", raising=False)
    with pytest.raises(StageError, match="AIF_ID_HASH_KEY is not set"):
        ingest_rows(rows_of(export()), params, now=NOW)
    frame = export(5, amt=[10.0, 11.0, -3.0, 12.0, 13.0])
    result = ingest_rows(rows_of(frame), params, now=NOW, secret=SECRET)
    cards = [str(4_000_000_000_000_000 + i % 3) for i in range(5)]
    kept = result.transactions.sort_values("tx_datetime")
    assert kept.customer_id.tolist() == [keys_of_text(pd.Series([c]), SECRET)[0]
                                         for i, c in enumerate(cards) if i != 2]
    # the composite id holds the card number: keyed under the secret too, and in no id map
    assert set(result.id_map.field) == {"terminal_id"}
    q = result.quarantine
    assert len(q) == 1 and not any(c.startswith(("value_customer", "value_transaction"))
                                   for c in q.columns)
    assert not any(c in q.astype(str).to_numpy().ravel().tolist() for c in cards)


def test_pii_columns_are_not_read_and_cannot_be_mapped(tmp_path):
    source = tmp_path / "export.csv"
    export(3).to_csv(source, index=False)
    rows = read_source(source, IngestParams(columns=MAPPING))
    assert not {"first", "ssn"} & set(rows.frame.columns)
    pq.write_table(pa.Table.from_pandas(export(3)), tmp_path / "export.parquet")
    rows = read_source(tmp_path / "export.parquet", IngestParams(columns=MAPPING))
    assert not {"first", "ssn"} & set(rows.frame.columns)
    with pytest.raises(ParamsError, match="ingest.pii"):
        read_source(source, IngestParams(columns={**MAPPING, "customer_id": "ssn"}))
    kept = ingest_rows(read_source(source, IngestParams(columns=MAPPING, extra_columns="keep")),
                       IngestParams(columns=MAPPING, extra_columns="keep"), now=NOW)
    assert "category" in kept.transactions.columns and "first" not in kept.transactions.columns


# --- a real export's files: what their CSV and Parquet quirks must not change -------------------

def read_csv_text(tmp_path: Path, text: str, **params) -> tuple:
    "`text` as an export's CSV file, read and ingested with MAPPING (and `params`)."
    source = tmp_path / "export.csv"
    source.write_text(text)
    ingest = IngestParams(columns=MAPPING, max_invalid_fraction=1.0, **params)
    return ingest_rows(read_source(source, ingest), ingest, now=NOW)


HEADER = "trans_num,cc_num,trans_date,trans_time,merchant,amt,is_fraud,First Name\n"


def test_a_blank_first_line_changes_neither_the_header_nor_the_ids(tmp_path):
    rows = ("md5-0,0123,2018-04-01,10:00:00,007,1.5,0,Jennifer\n"
            "md5-1,123,2018-04-01,10:00:01,7,2.5,0,Jennifer\n")
    plain = read_csv_text(tmp_path, HEADER + rows, extra_columns="keep").transactions
    blank = read_csv_text(tmp_path, "\n\r\n" + HEADER + rows, extra_columns="keep").transactions
    pd.testing.assert_frame_equal(blank, plain)
    # '0123' and '123' are two cards, '007' and '7' two terminals: their texts were read
    assert blank.customer_id.nunique() == 2 and blank.terminal_id.nunique() == 2
    assert "First Name" not in blank.columns   # PII, spelled with a space and capitals


@pytest.mark.parametrize("name", ["First Name", "first-name", "FirstName", " SSN ", "E-Mail",
                                  "Card Holder", "DATE_OF_BIRTH"])
def test_personal_columns_are_caught_however_the_header_spells_them(tmp_path, name):
    from aif.data.ingest import is_personal

    # a pattern of one's own is a shell pattern, as written: cc_* is not ccy
    assert is_personal("CC Num", ["cc_*"]) and not is_personal("ccy", ["cc_*"])
    assert is_personal("xname", ["[a-z]name"]) and not is_personal("-name", ["[a-z]name"])
    text = HEADER.replace("First Name", name) + \
        "md5-0,4000,2018-04-01,10:00:00,shop,1.5,0,Jennifer\n"
    kept = read_csv_text(tmp_path, text, extra_columns="keep")
    assert name not in kept.transactions.columns and len(kept.transactions) == 1
    assert "Jennifer" not in kept.transactions.astype(str).to_numpy().ravel().tolist()


def test_a_quoted_line_break_is_one_value_wherever_arrow_cuts_the_file(tmp_path):
    lines = [f",md5-{i},{4000 + i % 7},2018-04-01,10:{i // 60 % 60:02d}:{i % 60:02d},shop-{i},"
             f"{i % 90 + 1}.5,0,Jennifer\n" for i in range(40_000)]
    header = "note," + HEADER
    # the line holding byte 1 MiB - 150, where Arrow ends its first block of the file: a
    # quoted value of 300 line breaks at its start spans that end
    starts = np.cumsum([len(header)] + [len(line) for line in lines])
    k = int(np.searchsorted(starts, 2**20 - 150, side="right")) - 1
    lines[k] = '"' + "\n" * 300 + '"' + lines[k]
    result = read_csv_text(tmp_path, header + "".join(lines), extra_columns="keep")
    assert result.quarantine.empty and len(result.transactions) == len(lines)
    assert result.report["rows_read"] == len(lines)
    assert (result.transactions.note == "\n" * 300).sum() == 1


def test_a_stray_quote_quarantines_the_record_it_swallowed_never_a_mixed_row(tmp_path):
    card = "4916716558875162"
    text = HEADER + (
        'md5-0,4000,2018-04-01,10:00:00,"Joe\'s Diner,1.5,1,Jennifer\n'
        f'md5-1,{card},2018-04-01,10:00:01,Pizza 12" Large,9.99,0,Jennifer\n'
        "md5-2,4002,2018-04-01,10:00:02,shop,3.5,0,Jennifer\n")
    result = read_csv_text(tmp_path, text)
    tx, q = result.transactions, result.quarantine
    assert len(tx) == 1 and tx.tx_amount.tolist() == [3.5]   # no row with another's amount
    assert q.rule.tolist() == ["line_break_in_field"] and q.source_row.tolist() == [1]
    assert card not in result.id_map.raw.tolist()
    assert result.report["rows_read"] == result.report["rows_written"] + len(q)


def test_kept_extra_columns_keep_the_file_s_text(tmp_path):
    extras = {"branch": "01234", "big": "18446744073709551617", "near": "9007199254740993",
              "sci": "1e3", "na": "NA"}
    text = HEADER.replace(",First Name", "," + ",".join(extras)) + \
        "md5-0,4000,2018-04-01,10:00:00,shop,1.5,0," + ",".join(extras.values()) + "\n"
    kept = read_csv_text(tmp_path, text, extra_columns="keep").transactions
    assert kept[list(extras)].iloc[0].tolist() == list(extras.values())


def test_a_header_naming_a_column_twice_is_refused_where_it_is_read(tmp_path):
    text = HEADER.replace("First Name", "note,note,,") + \
        "md5-0,4000,2018-04-01,10:00:00,shop,1.5,0,a,b,,\n"
    # dropped (Excel's empty trailing columns): nothing reads them, nothing to refuse
    assert len(read_csv_text(tmp_path, text).transactions) == 1
    with pytest.raises(StageError, match=r"column '' is in the header twice \(columns 10, "
                                         r"11\); rename one"):
        read_csv_text(tmp_path, text, extra_columns="keep")
    with pytest.raises(StageError, match=r"column 'merchant' is in the header twice"):
        read_csv_text(tmp_path, text.replace("note,note", "merchant,note"))


def test_a_quote_never_closed_refuses_the_file_rather_than_lose_the_rows_after_it(tmp_path):
    rows = [f"md5-{i},{4000 + i},2018-04-01,10:00:{i:02d},shop,{i}.5,0,Jennifer\n"
            for i in range(50)]
    rows[30] = rows[30].replace("shop", '"shop')
    with pytest.raises(StageError, match=r"export\.csv: record 32 runs over 20 lines .*a "
                                         r"quote opened in it is not closed"):
        read_csv_text(tmp_path, HEADER + "".join(rows))


def test_hidden_and_underscore_folders_are_not_data_and_compressed_files_are_refused(tmp_path):
    landing = tmp_path / "landing"
    (landing / ".ipynb_checkpoints").mkdir(parents=True)
    (landing / "_temporary" / "0").mkdir(parents=True)
    good = HEADER + "md5-0,4000,2018-04-01,10:00:00,shop,1.5,0,Jennifer\n"
    (landing / "a.csv").write_text(good)
    (landing / "_SUCCESS").write_text("")
    for stale in (landing / ".ipynb_checkpoints/a-checkpoint.csv",
                  landing / "_temporary/0/part-0.csv"):
        stale.write_text(good.replace("1.5", "99.5"))
    ingest = IngestParams(columns=MAPPING)
    rows = read_source(landing, ingest)
    assert [str(f) for f in rows.files] == [str(landing / "a.csv")]
    assert ingest_rows(rows, ingest, now=NOW).transactions.tx_amount.tolist() == [1.5]
    (landing / "notes.gz").write_bytes(b"\x1f\x8b")   # not data: left alone
    assert len(read_source(landing, ingest).files) == 1
    (landing / "b.csv.gz").write_bytes(b"\x1f\x8b")
    for source in (landing, landing / "b.csv.gz"):
        with pytest.raises(StageError, match=r"b\.csv\.gz: compressed files are not read"):
            read_source(source, ingest)


def test_the_future_is_the_terminals_present_not_the_machine_s():
    from aif.data.ingest import latest_local_time

    now = pd.Timestamp("2026-06-01 12:00:00")   # UTC
    assert latest_local_time(IngestParams(timezone="Asia/Tokyo"), now) == \
        pd.Timestamp("2026-06-01 21:00:00")
    assert latest_local_time(IngestParams(timezone="America/New_York"), now) == \
        pd.Timestamp("2026-06-01 08:00:00")
    # no zone given: no terminal on Earth is past UTC+14
    assert latest_local_time(IngestParams(), now) == pd.Timestamp("2026-06-02 02:00:00")
    # a Tokyo transaction of an hour ago, on a machine in UTC, is not in the future
    params = IngestParams(columns={**MAPPING, "tx_datetime": "when"}, datetime_unit="s",
                          timezone="Asia/Tokyo")
    when = int(pd.Timestamp.now(tz="UTC").timestamp()) - 3600
    frame = export(1).drop(columns=["trans_date", "trans_time"]).assign(
        when=pd.array([str(when)], dtype="string"))
    result = ingest_rows(rows_of(frame), params)
    assert result.quarantine.empty, result.quarantine.rule.tolist()


def test_a_time_with_an_offset_and_no_zone_quarantines_its_row_as_the_service_refuses_it(
        tmp_path):
    text = HEADER.replace("trans_date,trans_time", "when").replace(",First Name", "") + \
        "md5-0,4000,2018-04-01 10:00:00,shop,1.5,0\n" + \
        "md5-1,4001,2018-04-01T10:00:01+02:00,shop,2.5,0\n" + \
        "md5-2,4002,2018-04-01 10:00:02,shop,3.5,0\n"
    (tmp_path / "export.csv").write_text(text)
    ingest = IngestParams(columns={**MAPPING, "tx_datetime": "when"}, max_invalid_fraction=0.5)
    result = ingest_rows(read_source(tmp_path / "export.csv", ingest), ingest, now=NOW)
    assert result.transactions.tx_amount.tolist() == [1.5, 3.5]
    q = result.quarantine
    assert q.rule.tolist() == ["timezone_aware"] and q.source_line.tolist() == [3]

def test_parquet_bytes_are_text_when_utf8_and_refused_in_one_line_when_not(tmp_path):
    frame = export(2).astype({"merchant": object})
    frame["merchant"] = [b"caf\xc3\xa9", b"shop"]
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "export.parquet")
    ingest = IngestParams(columns=MAPPING)
    tx = ingest_rows(read_source(tmp_path / "export.parquet", ingest), ingest, now=NOW)
    assert sorted(tx.transactions.terminal_id.tolist()) == sorted([key_of("café"), key_of("shop")])
    frame["merchant"] = [b"shop", b"caf\xe9"]   # latin-1, as an old Hive table may hold
    pq.write_table(pa.Table.from_pandas(frame), tmp_path / "export.parquet")
    with pytest.raises(StageError, match=r"export\.parquet: row 2, column 'merchant': bytes "
                                         "that are not UTF-8 text"):
        read_source(tmp_path / "export.parquet", ingest)
    uuids = pa.array([b"\xff" * 16, b"\x00" * 16], pa.binary(16))   # UUIDs kept as bytes
    table = pa.Table.from_pandas(frame.drop(columns="merchant")).append_column("merchant", uuids)
    pq.write_table(table, tmp_path / "export.parquet")
    with pytest.raises(StageError, match=r"row 1, column 'merchant': bytes that are not UTF-8"):
        read_source(tmp_path / "export.parquet", ingest)


def test_a_parquet_list_or_struct_is_no_id(tmp_path):
    frame = export(3)
    table = pa.Table.from_pandas(frame.drop(columns="merchant")).append_column(
        "merchant", pa.array([["1", "2"], [], ["shop"]], pa.list_(pa.string())))
    pq.write_table(table, tmp_path / "export.parquet")
    ingest = IngestParams(columns=MAPPING, max_invalid_fraction=1.0)
    result = ingest_rows(read_source(tmp_path / "export.parquet", ingest), ingest, now=NOW)
    assert result.transactions.empty
    assert result.quarantine.rule.tolist() == ["not_an_id"] * 3
    structs = pa.array([{"a": "1"}, {"a": "2"}, {"a": "3"}])
    pq.write_table(table.set_column(table.schema.get_field_index("merchant"), "merchant",
                                    structs), tmp_path / "export.parquet")
    result = ingest_rows(read_source(tmp_path / "export.parquet", ingest), ingest, now=NOW)
    assert result.quarantine.rule.tolist() == ["not_an_id"] * 3

def test_an_attribute_cannot_carry_a_sensitive_id_s_column():
    with pytest.raises(ParamsError, match="ingest.attributes.card is read from column "
                                          "'cc_num', which a sensitive id"):
        source_plan(IngestParams(columns=MAPPING, sensitive_ids=("customer_id",),
                                attributes={"card": {"column": "cc_num", "type": "category"}}))


def test_two_raw_ids_with_one_key_stop_ingest_naming_both(monkeypatch):
    import aif.data.ingest as ingest

    real = ingest.keys_of_text

    def colliding(texts, secret=None):   # a 63-bit collision, made to happen
        keys = real(texts, secret)
        keys[texts.astype(str).to_numpy() == "shop-1"] = key_of("shop-0")
        return keys

    monkeypatch.setattr(ingest, "keys_of_text", colliding)
    with pytest.raises(StageError, match="'shop-0' and 'shop-1'|'shop-1' and 'shop-0'"):
        ingest_rows(rows_of(export()), IngestParams(columns=MAPPING), now=NOW)


# --- end to end: a realistic export from the raw files to an online score ----------------------

def scan_for(values: set[str], root: Path, skip: tuple[str, ...] = ("landing",)) -> list[str]:
    "Every place under `root` (Parquet cells, JSON, SQLite, text) where one of `values` appears."
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if ".dvc/cache" in str(path) or ".git/" in str(path) or set(skip) & set(path.parts) \
                or path.suffix in (".py", ".ipynb", ".pyc"):
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            text = " ".join(str(v) for c in table.columns for v in c.to_pylist())
        elif path.suffix in (".sqlite", ".db"):
            with sqlite3.connect(path) as db:
                text = " ".join(str(row) for t, in db.execute(
                    "select name from sqlite_master where type='table'").fetchall()
                    for row in db.execute(f'select * from "{t}"'))
        else:
            text = path.read_bytes().decode("utf-8", "replace")
        found += [f"{v} in {path}" for v in values if v in text]
    return found


def test_a_card_export_goes_from_raw_files_to_an_online_score(modelling_project: Path):
    """Raw files to a model to the service, by params alone; replayed through the service,
    the export's rows get the offline features, declared ones included; no PII anywhere."""
    from test_serve import assert_same_features, service

    from aif.config.params import SimulateParams
    from aif.data.card_export import (
        CATEGORIES,
        DECLARED_FEATURES,
        INGEST_PARAMS,
        export_frame,
        score_request,
    )

    project, key = modelling_project, "AIF_ID_HASH_KEY"
    small = {**SMALL_MODELLING["simulate"], "n_customers": 150}   # 28,000 rows: seconds
    write_params(project, simulate=small,
                 ingest={**INGEST_PARAMS, "source": "data/landing/cards"},
                 features={"declared": DECLARED_FEATURES})
    run(["aif", "card-export", "--out", "data/landing/cards"], project)
    secret = {key: "a-secret-for-the-end-to-end-test-0123456789"}
    refused = run(["aif", "ingest"], project, check=False)
    assert refused.returncode != 0 and "AIF_ID_HASH_KEY is not set" in refused.stderr
    assert "Traceback" not in refused.stderr
    run(["dvc", "repro", "evaluate"], project, WANDB_MODE="offline",
        WANDB_API_KEY="not-a-real-key-9f3b2c", **secret)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert 0 < metrics["model"]["average_precision"] <= 1
    # batch scoring reads the raw export through the same mapping, keys and features
    run(["aif", "score", "--input", "data/landing/cards", "--output", "scored.parquet",
         "--since", "2018-07-06"], project, **secret)
    scored = pd.read_parquet(project / "scored.parquet")
    assert len(scored) > 100 and scored.fraud_probability.between(0, 1).all()
    report = json.loads((project / "reports/ingest.json").read_text())
    assert report["rows_quarantined"] == 3 and report["rows_written"] > 20_000
    assert report["sensitive_ids"]["fields"] == ["customer_id", "transaction_id"]
    # DVC cannot see the secret change; the service and batch scoring can: another secret is
    # refused at start, in one line
    for command in (["timeout", "60", "aif", "serve", "--port", "0"],
                    ["aif", "score", "--input", "data/landing/cards", "--output", "x.parquet"]):
        wrong = run(command, project, check=False,
                    AIF_ID_HASH_KEY="another-secret-0123456789abcdef0123456789")
        assert wrong.returncode not in (0, 124) and "not the secret the data was keyed with" \
            in wrong.stderr and "Traceback" not in wrong.stderr, (command, wrong.stderr)
    assert not (project / "x.parquet").exists()
    features = pd.read_parquet(project / "data/processed/features.parquet")
    model = json.loads((project / "models/model.json").read_text())
    used = [f for f in model["features"] if f.startswith(("category", "customer_category",
                                                          "customer_merchant", "tx_hour"))]
    assert len(used) >= 3   # the model was trained on declared features
    assert len(model["categories"]["category"]) == 14   # the vocabulary, frozen at training
    raw = export_frame(SimulateParams(**small))
    cards = set(raw.cc_num.unique())
    assert not set(features.customer_id) & {int(c) for c in cards}   # keyed, not the number
    assert (features.terminal_id > 2**48).any()   # merchant names: hashed keys

    replay = raw[(raw.trans_date >= "2018-07-06") & (raw.trans_date < "2018-07-07")]
    requests = [score_request(r) for r in replay.itertuples()]
    with service(project, "--state-until", "2018-07-06", **secret) as (client, _):
        schema = client.get("/openapi.json").json()["components"]["schemas"]["Transaction"]
        assert schema["properties"]["transaction_id"]["maxItems"] == 2   # from the mapping
        assert "(trans_date, trans_time)" in schema["properties"]["tx_datetime"]["description"]
        for tx in requests[:40]:                                         # one at a time ...
            r = client.post("/score", json=tx)
            assert r.status_code == 200, r.text
        r = client.post("/score", json={"transactions": requests[40:]})   # ... then a batch
        assert r.status_code == 200, r.text
        again = client.post("/score", json=requests[5])    # a retry: its first answer
        assert again.status_code == 200 and again.json() == client.post(
            "/score", json=requests[5]).json()
        replayed = client.post("/score", json={   # the naive ISO time ingest wrote: the same
            **requests[5], "tx_datetime": "T".join(requests[5]["tx_datetime"])})
        assert replayed.json() == again.json()
        other = next(c for c in CATEGORIES if c != requests[5]["merchant_category"])
        changed = client.post("/score", json={**requests[5], "merchant_category": other})
        assert changed.status_code == 409, changed.text   # not a retry: another transaction
        assert client.post("/score", json={**requests[0], "customer_lat": 91.0}
                           ).status_code == 422
        labelled = client.post("/labels", json={"transaction_id": requests[0]["transaction_id"],
                                                "tx_fraud": 1})
        assert labelled.status_code == 200 and labelled.json()["unknown"] == 0, labelled.text
        last = requests[-1]   # the same card as a number is the same card
        as_number = client.post("/score", json={
            **last, "transaction_id": [last["transaction_id"][0] + "-n", int(last["customer_id"])],
            "customer_id": int(last["customer_id"]),
            "tx_datetime": [last["tx_datetime"][0], last["tx_datetime"][1] + ".5"]})
        assert as_number.status_code == 200, as_number.text
    # a restart replays the journal into the state, attributes included: the retry still
    # gets its first answer
    with service(project, "--state-until", "2018-07-06", **secret) as (client, _):
        assert client.post("/score", json=requests[5]).json() == again.json()
    log = pq.read_table(project / "reports/predictions").to_pandas()
    replayed = log.iloc[:len(requests)].sort_values("transaction_id").reset_index(drop=True)
    offline = features.set_index("transaction_id").loc[replayed.transaction_id].reset_index()
    assert len(replayed) == len(requests) and replayed.transaction_id.is_unique
    assert_same_features(replayed, offline, model["features"])
    card = log[log.customer_id == log.customer_id.iloc[-1]].sort_values("tx_datetime")
    assert card.customer_nb_tx_1d.diff().iloc[-1] == 1

    pii = {str(v) for c in ("first", "last", "street", "ssn", "dob") for v in raw[c].unique()}
    wanted = {v for v in pii if len(v) > 5} | cards
    written = {p.relative_to(project).parts[0] for p in project.rglob("*.parquet")}
    assert {"data", "reports", "models"} <= written and (project / "wandb").is_dir()
    seen = scan_for(wanted, project / "data/landing", skip=())   # the scan sees them where they are
    assert {hit.split(" in /")[0] for hit in seen} == wanted
    leaks = scan_for(wanted, project)
    assert not leaks, leaks[:5]


def test_readme_s_declared_features_are_the_card_export_s_and_valid():
    "README's `features.declared` example is the card export's, and params take it whole."
    import re

    import yaml

    from aif.config.params import FeaturesParams
    from aif.data.card_export import DECLARED_FEATURES
    from aif.features.specs import feature_specs

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    [block] = re.findall(r"```yaml\n(  features:\n    declared:\n.*?)```", text, re.S)
    declared = yaml.safe_load(block)["features"]["declared"]
    assert declared == DECLARED_FEATURES
    names = [s.name for s in feature_specs(FeaturesParams(declared=tuple(declared)), 7)]
    assert names[-len(declared):] == [d["name"] for d in declared]


def test_a_journal_from_before_an_attribute_was_declared_is_refused_in_one_line(tmp_path):
    """Transactions scored before `ingest.attributes` gained a column the new features read
    cannot be replayed (their value was never sent): a traceback (KeyError) at start, now one
    line saying how to start from the data; the journal is left as it was."""
    from aif.features.specs import declared_specs
    from aif.io import StageError
    from aif.serve.app import replay
    from aif.serve.journal import Journal
    from aif.serve.state import OnlineFeatures

    journal = Journal(tmp_path / "journal.sqlite")
    old = {"transaction_id": np.array([1, 2]), "customer_id": np.array([5, 5]),
           "terminal_id": np.array([7, 8]), "tx_amount": np.array([10.0, 20.0]),
           "tx_datetime": np.array([1_530_000_000_000_000, 1_530_000_100_000_000])}
    journal.submit("score", {**old, "tx_datetime": old["tx_datetime"].view("datetime64[us]")},
                   old["tx_datetime"])
    specs = declared_specs(({"name": "categories_7d", "entity": "customer", "window_days": 7,
                             "aggregation": "distinct_count", "inputs": ["merchant_category"]},), 7)
    with pytest.raises(StageError, match="entry 1 holds transactions scored without attribute "
                                         "merchant_category, which the features read now"):
        replay(OnlineFeatures.empty(specs), journal)
    assert [kind for _, kind in journal.kinds()] == ["score"]


# a bank's export that writes NULL for a missing value and '-' for a missing amount
NULL_TEXTS_MAPPING = IngestParams(
    columns=MAPPING, sensitive_ids=["customer_id"], null_texts=["NULL", "-"],
    attributes={**REQUEST_MAPPING.attributes,
                "region": {"column": "region", "type": "category", "nullable": True}})


@pytest.mark.parametrize("text", ["NULL", " - "])
def test_a_null_text_is_no_value_alike_offline_and_online(text):
    """With `ingest.null_texts`, a listed text is no value in every field, offline and online
    alike: a nullable category's is its null (a request sending it scores as one sending
    null), a required category's and an id's are refused (ingest quarantines the row as
    `missing`; /score answers 422 naming the field), on either decoder. A text the list does
    not hold ('NA', a country) is a value: a category and a terminal of that name, with the
    keys ingest gives them."""
    from fastapi.exceptions import RequestValidationError

    from aif.data.ingest import parse_attribute, parse_ids
    from aif.schema import Attribute
    from aif.serve.schema import Requests
    params, requests = NULL_TEXTS_MAPPING, Requests(NULL_TEXTS_MAPPING, SECRET)
    region = Attribute("region", "region", "category", nullable=True)
    category = Attribute("category", "category", "category")

    def columns(**changes) -> dict:
        raw = json.dumps(plain_row(**{"region": "EU", **changes})).encode()
        return {k: (v.dtype.str, v.tobytes())   # bytes: NaN (visits) equals itself
                for k, v in requests.score_columns(raw).columns.items()}

    # offline
    values, rules = parse_attribute(pd.Series([text, "EU"], dtype="string"), region, params)
    assert rules.empty and values.isna().tolist() == [True, False]
    _, rules = parse_attribute(pd.Series([text], dtype="string"), category, params)
    assert rules.tolist() == ["missing"]
    _, rules, _ = parse_ids([pd.Series([text], dtype="string")], None, params.no_value_texts)
    assert rules.tolist() == ["missing"]
    # online: the same reading
    assert columns(region=text) == columns(region=None) != columns()
    for field in ("category", "terminal_id"):
        with pytest.raises(RequestValidationError) as refused:
            columns(**{field: text})
        assert [(e["loc"], e["type"]) for e in refused.value.errors()] == [
            (("body", field), "no_value")], refused.value.errors()
        assert f"'{text.strip()}' reads as no value" in refused.value.errors()[0]["msg"]
    # a date beside a time that reads as none: no time (not a time that failed), both ways
    frame = export(2, trans_time=[text, "10:00:01"], visits=[1, 1], online=["true"] * 2,
                   region=["EU"] * 2)
    quarantine = ingest_rows(rows_of(frame), params, now=NOW, secret=SECRET).quarantine
    assert quarantine[["source_row", "column", "rule"]].values.tolist() == [
        [1, "tx_datetime", "missing"]]
    with pytest.raises(RequestValidationError) as refused:
        columns(tx_datetime=["2018-09-17", text])
    assert [(e["loc"], e["type"]) for e in refused.value.errors()] == [
        (("body", "tx_datetime"), "missing")]
    # 'NA' is not listed: a value, offline and online
    keys, rules, _ = parse_ids([pd.Series(["NA"], dtype="string")], None, params.no_value_texts)
    assert rules.empty and columns(terminal_id="NA")["terminal_id"][1] == keys.to_numpy().tobytes()
    values, rules = parse_attribute(pd.Series(["NA"], dtype="string"), region, params)
    assert rules.empty and values.tolist() == ["NA"]
    assert columns(region="NA") != columns(region=None)


def test_null_texts_must_be_texts_as_written(tmp_path: Path):
    """YAML reads an unquoted NULL (or null, ~) as no value and 0 as a number: params refuse
    them in one line naming the key, as they refuse a text with spaces around it, a text a
    number or a boolean is read from, and a declared category value the list makes none.
    The whole list written NULL would be YAML's null, the default list: the workspace's
    params.yaml is refused, with the line and column of the value YAML keeps; written null, ~
    or nothing, it is the default."""
    from aif.data.ingest import source_plan
    path = tmp_path / "params.yaml"

    def loaded(text: str) -> IngestParams:
        path.write_text(text)
        return load_params(path).ingest

    for spelled in ("NULL", "Null"):
        for text, at in ((f"seed: 1\ningest:\n  null_texts: {spelled}\n", "3:15"),
                         (f"ingest:\n  null_texts: ['NULL']\n  null_texts: {spelled}\n", "3:15"),
                         (f"base: &b {{null_texts: {spelled}}}\ningest:\n  <<: *b\n", "1:23")):
            said = rf"^{re.escape(str(path))}:{at}: ingest.null_texts: {spelled} is YAML's null"
            with pytest.raises(ParamsError, match=rf"{said}.*write \['{spelled}'\]$"):
                loaded(text)
    assert loaded("ingest:\n  null_texts: NULL\n  null_texts: ['NULL']\n").no_value_texts == (
        "", "NULL")   # the value YAML keeps is the last
    for default in ("null", "~", ""):
        assert loaded(f"ingest:\n  null_texts: {default}\n").no_value_texts == CSV_NO_VALUE_TEXTS
    # a registered model's params.yaml (the gate reads its champion's) reads as it did then
    assert params_from_text("ingest:\n  null_texts: NULL\n").ingest.null_texts is None
    for broken, says in (("seed: [1", "not valid YAML"),   # one line each, no traceback
                         ("[" * 5000 + "]" * 5000, "nested too deeply to read"),
                         ("seed: " + "9" * 5000, "a value YAML cannot read"),
                         ("split:\n  start: 2018-02-30\n", "a value YAML cannot read"),
                         ("seed: 1\nsplit: 7\x07\n", "not valid YAML (unacceptable character"),
                         ("seed: 1\n---\nseed: 2\n", "not valid YAML (expected a single document")):
        with pytest.raises(ParamsError, match=rf"^params.yaml(:\d+:\d+)?: {re.escape(says)}"
                           ) as refused:
            params_from_text(broken)
        assert "\n" not in str(refused.value)
    assert str(refused.value).startswith("params.yaml:2:1:")   # where the second one starts
    with pytest.raises(ParamsError, match=r"^params.yaml:2:9: not valid YAML \(unacceptable"):
        params_from_text("seed: 1\nsplit: 7\x07\n")   # the reader's place: a character
    path.write_bytes(b"seed: 1\nsplit: \xff\n")
    with pytest.raises(ParamsError, match=r"yaml: not UTF-8 text \(byte 0xff at offset 15\)$"):
        load_params(path)
    for bad in ([None], ["NA", 0], [" NULL"], "NULL"):
        with pytest.raises(ParamsError, match="ingest.null_texts"):
            IngestParams(null_texts=bad)
    # a text a Parquet file or a request holds as a number or a boolean: one value, two readings
    for number in ("0", "-1", "1.5", "1,5", ".5", "1e3", "TRUE", "false"):
        with pytest.raises(ParamsError, match="reads as a number or a boolean"):
            IngestParams(null_texts=["NULL", number])
    with pytest.raises(ParamsError, match="ingest.attributes.country.values holds 'NA'"):
        source_plan(IngestParams(null_texts=["NA"], attributes={
            "country": {"column": "c", "type": "category", "values": ["BE", "NA"]}}))
    assert source_plan(IngestParams(attributes={   # by default 'NA' is a country
        "country": {"column": "c", "type": "category", "values": ["BE", "NA"]}})).attributes
    assert IngestParams(null_texts=["NULL"]).no_value_texts == ("", "NULL")
    assert IngestParams().category_no_value_texts == ("",)
