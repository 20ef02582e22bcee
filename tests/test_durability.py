"""What the scoring service acknowledged survives kill -9: `aif serve` killed for real, under
a paced stream of single transactions (300/s) and beside batches, once in the middle of a
batch and once while it writes a snapshot. Clients retry what got no answer, as a client whose
connection broke does. After the restarts every transaction is in the prediction log once,
with the features an uninterrupted run computes, and every answer a client got is the one
logged. Also the journal alone, killed while it appends."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import run_env, wait_until_up, write_params
from test_serve import TEST_START, assert_same_features, free_port, interim, payload, service

from aif.config.params import load_params
from aif.features.engine import compute_features
from aif.features.store import read_columns
from aif.modelling.model import Model


class Server:
    "One `aif serve` at a time in `project`, started and killed as an operator would."

    def __init__(self, project: Path):
        self.project, self.proc, self.url = project, None, None
        self.log = open(project / "serve.log", "a")

    def start(self) -> None:
        port = free_port()
        self.proc = subprocess.Popen(["aif", "serve", "--port", str(port), "--state-until",
                                      TEST_START], cwd=self.project, env=run_env(),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(lambda: httpx.get(f"{url}/ready", timeout=5), self.proc,
                      self.project / "serve.log", "the service", pause=0.1)
        self.url = url

    def kill9(self) -> None:
        self.url = None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down cleanly
        assert self.proc.wait(timeout=60) in (0, -signal.SIGTERM)

    def writing_snapshot(self) -> bool:
        "Whether a snapshot is being written (its temporary file is there)."
        return any((self.project / "models/serving").glob(".state.parquet.tmp-*"))


def post_until_answered(server: Server, body: dict, answers: dict,
                        clients: dict | None = None) -> int:
    """Send `body` until some server answers it (200), retrying across kills and restarts.
    Returns how many times it was sent."""
    clients = {} if clients is None else clients   # one keep-alive connection per server
    attempts = 0
    while True:
        url = server.url
        if url is not None:
            if url not in clients:
                clients[url] = httpx.Client(base_url=url, timeout=30)
            client = clients[url]
            attempts += 1
            try:
                r = client.post("/score", json=body)
                assert r.status_code == 200, r.text
                for result in r.json()["results"]:
                    answers[result["transaction_id"]] = result
                return attempts
            except httpx.TransportError:
                clients.pop(url).close()
        time.sleep(0.02)


def paced(server: Server, txs: list[dict], per_second: float, answers: dict,
          progress: list[str]) -> threading.Thread:
    "Single transactions at `per_second`, in order (each retried until answered)."
    def send():
        start, clients = time.monotonic(), {}
        for i, tx in enumerate(txs):
            time.sleep(max(0.0, start + i / per_second - time.monotonic()))
            post_until_answered(server, tx, answers, clients)
            progress[0] = tx["tx_datetime"]
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def expected_features(project: Path, sent: pd.DataFrame) -> pd.DataFrame:
    """What an uninterrupted service computes for `sent`: the offline engine on the data the
    state was warmed with and the sent transactions (their labels unknown, as online)."""
    params = load_params(project / "params.yaml")
    model = Model.load(project / "models")
    columns, _ = read_columns(project / "data/interim/transactions.parquet")
    start = np.datetime64(TEST_START, "us").astype(np.int64)
    keep = (columns["tx_datetime"] < start) | np.isin(columns["transaction_id"],
                                                      sent.transaction_id.to_numpy())
    stream = {c: v[keep] for c, v in columns.items()}
    stream["tx_fraud"] = np.where(stream["tx_datetime"] < start, stream["tx_fraud"], 0)
    values = compute_features(stream, model.feature_specs(params.features), params.features)
    frame = pd.DataFrame({"transaction_id": stream["transaction_id"],
                          **{n: values[n] for n in model.features}})
    return frame[stream["tx_datetime"] >= start].set_index("transaction_id")


def test_kill_9_in_a_batch_and_in_a_snapshot_loses_no_acknowledged_transaction(
        trained_project: Path, tmp_path: Path):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(trained_project, project, symlinks=True)
    # batches of days of transactions beside a stream of singles: a lateness above a batch's
    # span (what is late is another test's subject, tests/test_online_state.py)
    write_params(project, serve={"poll_seconds": 0.5, "log_flush_seconds": 0.3,
                                 "snapshot_seconds": 0.7, "allowed_lateness_seconds": 8 * 86400})
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-06-30")]
    # Two streams over disjoint cards and terminals, so that their interleaving, which the
    # threads decide, cannot change a feature: singles (even ids) and batches (odd ids).
    singles = window[(window.customer_id % 2 == 0) & (window.terminal_id % 2 == 0)]
    batched = window[(window.customer_id % 2 == 1) & (window.terminal_id % 2 == 1)]
    # two larger batches (about 700 rows, 40 ms in the service) are the ones killed
    batches = np.split(np.arange(len(batched)),
                       (np.cumsum([0.15, 0.15, 0.3, 0.3, 0.05]) * len(batched)).astype(int))
    answers: dict[int, dict] = {}
    server = Server(project)
    server.start()
    progress = [""]   # the event time the singles have reached
    stream = paced(server, payload(singles), 300, answers, progress)

    attempts: dict[int, int] = {}

    def send_batch(k: int) -> threading.Thread:
        """Batch k once the singles are within a day of its end: both streams move the one
        event clock, and neither may leave the other behind by the allowed lateness."""
        rows = batched.iloc[batches[k]]
        due = str(rows.tx_datetime.max() - pd.Timedelta(days=1))
        while progress[0] < due and stream.is_alive():
            time.sleep(0.005)
        body = {"transactions": payload(rows)}
        thread = threading.Thread(target=lambda: attempts.__setitem__(
            k, post_until_answered(server, body, answers)))
        thread.start()
        return thread

    for k in range(2):
        send_batch(k).join()
    for k, delay in ((2, 0.005), (3, 0.015)):   # killed while a batch is in the service
        sending = send_batch(k)
        time.sleep(delay)
        server.kill9()
        server.start()
        sending.join()
        assert attempts[k] >= 2, f"batch {k} was answered before the kill"   # so it was retried
    deadline = time.monotonic() + 30          # then while a snapshot is written
    while not server.writing_snapshot():
        assert time.monotonic() < deadline, "no snapshot was taken"
        time.sleep(0.001)
    server.kill9()
    server.start()
    for k in (4, 5):
        send_batch(k).join()
    stream.join(timeout=120)
    assert not stream.is_alive()
    server.stop()

    sent = pd.concat([singles, batched])
    logged = pd.read_parquet(project / "reports/predictions")
    assert sorted(logged.transaction_id) == sorted(sent.transaction_id)   # each once
    assert set(answers) == set(sent.transaction_id)
    logged = logged.set_index("transaction_id").loc[sorted(answers)]
    got = np.array([answers[i]["score"] for i in sorted(answers)])
    np.testing.assert_array_equal(logged.score.to_numpy(), got)   # the answers are the log's
    expected = expected_features(project, sent).loc[sorted(answers)]
    assert_same_features(logged, expected, expected.columns)
    assert not list((project / "models/serving").glob(".*.tmp-*"))


JOURNAL_WRITER = """
import sys, numpy as np
from pathlib import Path
from aif.serve.journal import Journal
journal = Journal(Path(sys.argv[1]), "always")
for i in range(100_000):
    seq = journal.append("score", {"transaction_id": np.arange(i * 50, i * 50 + 50)},
                         np.array([i]))
    print(seq, flush=True)   # acknowledged: the journal returned
"""


def test_the_journal_keeps_every_entry_it_acknowledged_through_kill_9(tmp_path: Path):
    from aif.serve.journal import Journal

    path = tmp_path / "journal.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", JOURNAL_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True, env=run_env())
    acknowledged: list[int] = []
    reader = threading.Thread(target=lambda: acknowledged.extend(
        int(line) for line in writer.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 20:
        assert time.monotonic() < deadline and writer.poll() is None
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    reader.join()
    journal = Journal(path)
    entries = list(journal.since(0))
    assert [seq for seq, _, _ in entries][:len(acknowledged)] == acknowledged
    for seq, _, table in entries:
        assert table["transaction_id"].tolist() == list(range((seq - 1) * 50, seq * 50))
    assert journal.append("score", {"transaction_id": np.arange(3)}, np.array([0])) == \
        len(entries) + 1



def test_a_restart_rebuilds_exactly_the_live_state(trained_project: Path, tmp_path: Path):
    """What the service keeps, the data it started from and its journal rebuild exactly: after
    batches, single transactions and labels (recorded and changed), the state a restart
    replays is the one the service saved at exit, row for row."""
    import shutil

    import pyarrow.parquet as pq

    project = tmp_path / "project"
    shutil.copytree(trained_project, project, symlinks=True)
    write_params(project, serve={"allowed_lateness_seconds": 8 * 86400})
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-06-26")]
    snapshot = project / "models/serving/state.parquet"
    with service(project, "--state-until", TEST_START) as (client, _):
        first = payload(window.iloc[:-50])
        assert client.post("/score", json={"transactions": first}).status_code == 200
        for tx in payload(window.iloc[-50:]):
            assert client.post("/score", json=tx).status_code == 200
        labels = [{"transaction_id": tx["transaction_id"], "tx_fraud": i % 2}
                  for i, tx in enumerate(first[:30])]
        assert client.post("/labels", json={"labels": labels}).status_code == 200
        assert client.post("/labels", json={**labels[0], "tx_fraud": 1}).status_code == 200
    live = pq.read_table(snapshot)   # saved at exit
    # --state-until: the restart starts from the data again and replays the whole journal
    with service(project, "--state-until", TEST_START):
        pass
    rebuilt = pq.read_table(snapshot)
    assert live.num_rows > len(window) and rebuilt.equals(live)
    assert rebuilt.schema.metadata[b"clock"] == live.schema.metadata[b"clock"]
    # the replay read every entry (1 + 50 + 2); the live state counts the scored ones only (a
    # label's entry is written before it is recorded), so a restart from its snapshot records
    # the two labels again, which changes nothing
    assert int(rebuilt.schema.metadata[b"journal_seq"]) == 53
    assert int(live.schema.metadata[b"journal_seq"]) == 51


def project_copy(trained_project: Path, tmp_path: Path) -> Path:
    import shutil

    project = tmp_path / "project"
    shutil.copytree(trained_project, project, symlinks=True)
    return project


def in_process(project: Path, until: str | None = TEST_START):
    "The service `aif serve` builds for `project`, in this process: the test runs its lifespan."
    from aif.config.paths import project_paths
    from aif.serve.app import build_service

    return build_service(project_paths(project), load_params(project / "params.yaml"), None,
                         until)


@contextlib.asynccontextmanager
async def serving(service):
    "A client on the started service; then the service stopped, which must finish cleanly."
    from aif.serve.app import create_app, lifespan_of

    app = create_app(service)
    running = lifespan_of(service)(app)
    await anext(running)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://aif") as c:
        yield c
    with pytest.raises(StopAsyncIteration):
        await anext(running)


def recorded_prunes(service) -> list[tuple]:
    "What the service's journal is asked to drop from now on (each prune still done)."
    pruned, prune = [], service.journal.prune
    service.journal.prune = lambda *upto: (pruned.append(upto), prune(*upto))[1]
    return pruned


async def snapshot_pruning_labels(service) -> None:
    """A snapshot once the prediction log holds the first three entries (a score, labels, a
    score), which prunes the labels' entry: the snapshot is the only place they are kept."""
    import asyncio

    from aif.serve.app import snapshot

    deadline = time.monotonic() + 30
    while service.predictions.confirmed_seq < 3:   # logged: the snapshot may prune
        assert time.monotonic() < deadline, "the prediction log was not written"
        await asyncio.sleep(0.01)
    assert await snapshot(service)
    assert "labels" not in [kind for _, kind in service.journal.kinds()]   # pruned


def test_a_stop_while_a_snapshot_is_written_waits_for_it_and_saves_the_state(
        trained_project: Path, tmp_path: Path):
    """The service stopped while a snapshot is written (its lifespan run in process, so that
    the stop surely meets the write): the shutdown waits for that write, then saves the state
    it ends with, and finishes without an error; the next start goes on from it. Three rounds
    (when a forked child wrote snapshots, the stop and the snapshot's own wait raced for the
    child, and each round failed about one time in two with ChildProcessError)."""
    import asyncio

    import pyarrow.parquet as pq

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 0.05})
    rows = interim(project)
    stream = payload(rows[rows.tx_datetime >= TEST_START].iloc[:30])

    async def serve_then_stop_in_a_snapshot(service, sent: list[dict]) -> None:
        async with serving(service) as client:
            for tx in sent:
                assert (await client.post("/score", json=tx)).status_code == 200
            deadline = time.monotonic() + 30
            while service.snapshotting is None:   # a snapshot is being written
                assert time.monotonic() < deadline, "no snapshot was taken"
                await asyncio.sleep(0.001)

    for start in range(3):   # the first from the data, the next from the snapshot saved
        service = in_process(project, TEST_START if start == 0 else None)
        pruned = recorded_prunes(service)
        asyncio.run(serve_then_stop_in_a_snapshot(service, stream[start * 10:][:10]))
        assert pruned and pruned[-1][0] == 10 * (start + 1)   # the state saved at the stop
        saved = pq.read_table(project / "models/serving/state.parquet")
        assert int(saved.schema.metadata[b"journal_seq"]) == 10 * (start + 1)


def test_a_snapshot_that_cannot_be_written_is_reported_and_the_journal_keeps_everything(
        trained_project: Path, tmp_path: Path):
    """Snapshots to a place that cannot be written (a file stands where its folder should be):
    each is counted as failed and logged, requests go on being answered, the stop finishes,
    and the journal keeps every scored entry (none pruned), so a restart loses nothing."""
    import asyncio

    from aif.serve.journal import Journal

    project = project_copy(trained_project, tmp_path)
    (project / "models/serving").mkdir(parents=True, exist_ok=True)
    (project / "models/serving/blocked").write_text("not a folder")
    write_params(project, serve={"snapshot_seconds": 0.05,
                                 "snapshot": "models/serving/blocked/state.parquet"})
    rows = interim(project)
    sent = payload(rows[rows.tx_datetime >= TEST_START].iloc[:12])
    service = in_process(project)
    pruned = recorded_prunes(service)

    def snapshots(outcome: str) -> float:
        return service.collector.get_sample_value("aif_state_snapshots_total",
                                                  {"outcome": outcome}) or 0.0

    async def serve_beside_failing_snapshots() -> None:
        async with serving(service) as client:
            for i, tx in enumerate(sent):
                assert (await client.post("/score", json=tx)).status_code == 200
                if i == 5:   # half sent: let snapshots fail in between
                    deadline = time.monotonic() + 30
                    while snapshots("failed") < 2:
                        assert time.monotonic() < deadline, "no snapshot was tried"
                        await asyncio.sleep(0.01)

    asyncio.run(serve_beside_failing_snapshots())
    assert snapshots("failed") >= 3 and snapshots("written") == 0   # the last at the stop
    assert pruned == []   # nothing saved, nothing dropped
    journal = Journal(project / "models/serving/journal.sqlite")
    assert [kind for _, kind, _ in journal.since(0)] == ["score"] * len(sent)


def test_a_prune_that_fails_after_a_written_snapshot_is_not_a_failed_snapshot(
        trained_project: Path, tmp_path: Path, capsys):
    """The journal refuses to prune (a disk error): each snapshot is still written and counted
    once as written, never also as failed; the prune failure is counted and logged on its own;
    and once the journal works again, the next snapshot prunes up to what it holds."""
    import asyncio
    import sqlite3

    from aif.serve.app import snapshot

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 3600})   # snapshots taken here, by hand
    rows = interim(project)
    sent = payload(rows[rows.tx_datetime >= TEST_START].iloc[:6])
    service = in_process(project, TEST_START)
    prune, broken, pruned = service.journal.prune, [True], []

    def failing_prune(*upto):
        if broken[0]:
            raise sqlite3.OperationalError("disk I/O error")
        pruned.append(upto)
        return prune(*upto)

    service.journal.prune = failing_prune

    def counted(name: str, **labels) -> float:
        return service.collector.get_sample_value(name, labels) or 0.0

    async def snapshots_while_the_journal_fails() -> None:
        async with serving(service) as client:
            for tx in sent:
                assert (await client.post("/score", json=tx)).status_code == 200
            while service.predictions.confirmed_seq < len(sent):   # logged: prunable
                await asyncio.sleep(0.01)
            assert await snapshot(service) and await snapshot(service)
            broken[0] = False
            assert await snapshot(service)

    asyncio.run(snapshots_while_the_journal_fails())
    assert counted("aif_state_snapshots_total", outcome="written") == 4   # and the stop's
    assert counted("aif_state_snapshots_total", outcome="failed") == 0
    assert counted("aif_journal_prune_failures_total") == 2
    log = capsys.readouterr().err
    assert log.count("journal not pruned (OperationalError: disk I/O error)") == 2
    assert "snapshot failed" not in log
    assert [upto for upto, _ in pruned] == [len(sent)] * 2   # the next one, and the stop's


def test_a_label_is_kept_by_the_state_before_its_journal_entry_is_synced(
        trained_project: Path, tmp_path: Path):
    """A label is in the state from the moment its journal entry is written, as a score is,
    not only once the entry is synced: a snapshot taken while the sync runs (after a later
    score) must hold it, or the snapshot's prune could drop the label's entry and a crash
    would lose a label the client got 200 for. The sync of the label's entry is held open."""
    import asyncio
    from concurrent.futures import Future

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"journal_sync": "always", "snapshot_seconds": 3600})
    rows = interim(project)
    first, later = payload(rows[rows.tx_datetime >= TEST_START].iloc[:2])
    service = in_process(project)
    held, submit = [], service.journal.submit

    def submit_holding_labels(kind, columns, times):
        synced = submit(kind, columns, times)
        if kind != "labels":
            return synced
        answered = Future()   # done when the test lets it, after the real sync
        held.append(lambda: answered.set_result(synced.result()))
        return answered

    service.journal.submit = submit_holding_labels
    fraud = {"transaction_id": first["transaction_id"], "tx_fraud": 1}

    async def label_while_its_sync_is_held() -> None:
        async with serving(service) as client:
            assert (await client.post("/score", json=first)).status_code == 200
            labelled = asyncio.create_task(client.post("/labels", json=fraud))
            deadline = time.monotonic() + 30
            while not held:
                assert time.monotonic() < deadline, "the label never reached the journal"
                await asyncio.sleep(0.001)
            assert (await client.post("/score", json=later)).status_code == 200
            known, label = service.features.label_states([first["transaction_id"]])
            assert known[0] and label[0] == 1   # kept while its entry is still syncing
            held[0]()
            assert (await labelled).status_code == 200

    asyncio.run(label_while_its_sync_is_held())


def test_a_state_rebuilt_for_a_new_model_misses_nothing_acknowledged_meanwhile(
        trained_project: Path, tmp_path: Path):
    """A new model whose features the running state does not keep gets a state rebuilt from
    the data aside while requests go on (`rebuilt_state`). Held open once it has read the
    journal: a batch scored, a label recorded and a label changed meanwhile, and a label
    recorded before whose journal entry a snapshot has pruned since, are all in the rebuilt
    state as in the running one, which gives the next transactions the same features."""
    import asyncio

    import aif.serve.app as app

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 3600, "log_flush_seconds": 0.05})
    rows = interim(project)
    later = rows[rows.tx_datetime >= TEST_START]
    before, meanwhile, after = payload(later.iloc[:20]), payload(later.iloc[20:25]), later[25:45]
    pruned_label = {"transaction_id": before[3]["transaction_id"], "tx_fraud": 1}
    changed = before[15]["transaction_id"]   # 1 before the rebuild, 0 once it began
    new_label = {"transaction_id": meanwhile[2]["transaction_id"], "tx_fraud": 1}
    service = in_process(project)
    copied, go, built, release = (threading.Event() for _ in range(4))
    warm_state = app.warm_state

    def warm_state_held_open(*args):   # held before it reads anything, and after
        copied.set()
        assert go.wait(30)
        state = warm_state(*args)
        built.set()
        assert release.wait(30)
        return state

    async def until(event: threading.Event, rebuilding: asyncio.Task) -> None:
        deadline = time.monotonic() + 60
        while not event.is_set():
            assert not rebuilding.done() and time.monotonic() < deadline
            await asyncio.sleep(0.005)

    async def rebuild_while_serving():
        async with serving(service) as client:
            for i, part in enumerate((before[:10], before[10:])):
                response = await client.post("/score", json={"transactions": part})
                assert response.status_code == 200
                if i == 0:   # the label's entry between two scores' (seq 2 of 3)
                    assert (await client.post("/labels", json=pruned_label)).status_code == 200
            await snapshot_pruning_labels(service)
            fraud = {"transaction_id": changed, "tx_fraud": 1}
            assert (await client.post("/labels", json=fraud)).status_code == 200
            app.warm_state = warm_state_held_open
            try:
                async with service.state_lock:
                    rebuilding = asyncio.create_task(
                        app.rebuilt_state(service, service.features.specs))
                    await until(copied, rebuilding)   # the running state's labels copied
                    # changed after the copy and before the rebuild reads the journal: the
                    # copy's older label must not win
                    unfraud = {"transaction_id": changed, "tx_fraud": 0}
                    assert (await client.post("/labels", json=unfraud)).status_code == 200
                    go.set()
                    await until(built, rebuilding)   # the journal read
                    response = await client.post("/score", json={"transactions": meanwhile})
                    assert response.status_code == 200
                    assert (await client.post("/labels", json=new_label)).status_code == 200
                    release.set()
                    return service.features, await rebuilding
            finally:
                app.warm_state = warm_state

    running, rebuilt = asyncio.run(rebuild_while_serving())
    ids = [tx["transaction_id"] for tx in before + meanwhile]
    assert sorted(rebuilt.already_scored(ids)) == sorted(ids)
    labelled = [pruned_label["transaction_id"], new_label["transaction_id"], changed]
    for state in (running, rebuilt):
        known, label = state.label_states(labelled)
        assert known.all() and label.tolist() == [1, 1, 0]
    assert np.array_equal(np.sort(rebuilt.known.everything()), np.sort(running.known.everything()))
    columns = {c: after[c].to_numpy() for c in
               ("transaction_id", "customer_id", "terminal_id", "tx_amount")}
    columns["tx_datetime"] = after.tx_datetime.to_numpy().astype("datetime64[us]").view(np.int64)
    expected, got = running.prepare(columns).values, rebuilt.prepare(columns).values
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=0, err_msg=name)


def test_a_restart_on_reingested_data_keeps_the_labels_received_online(
        trained_project: Path, tmp_path: Path, capsys):
    """A re-ingest under a running service leaves other data than its snapshot started from,
    even with a file time older than the snapshot (kept from the export). The restart builds
    the state from the data and replays the journal. Every label the service acknowledged (its
    label audit) stands, whether a snapshot pruned its journal entry or not, for a transaction
    the data holds or one scored online only, and the start says how many differ from the
    data's; a label the new data changed and the service never received is the new data's,
    not the old one the snapshot holds. A new model's state, rebuilt under the service that
    began on the old data, takes the same labels."""
    import asyncio

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import aif.serve.app as app
    from aif.serve.journal import Journal

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 3600, "log_flush_seconds": 0.05})
    later = interim(project).query("tx_datetime >= @TEST_START")
    in_data = payload(later.iloc[:5])   # transactions the data holds, with its labels
    next_batch = payload(later.iloc[10:15])
    outside = [{**tx, "transaction_id": 10**12 + i}   # scored online only
               for i, tx in enumerate(payload(later.iloc[5:10]))]
    data_labels = later.tx_fraud.iloc[:2].astype(int).tolist()
    before = [{"transaction_id": outside[0]["transaction_id"], "tx_fraud": 1},   # pruned
              {"transaction_id": outside[1]["transaction_id"], "tx_fraud": 0},
              {"transaction_id": in_data[0]["transaction_id"], "tx_fraud": 1 - data_labels[0]}]
    after = [{"transaction_id": outside[2]["transaction_id"], "tx_fraud": 1},   # journalled
             {"transaction_id": in_data[1]["transaction_id"], "tx_fraud": 1 - data_labels[1]}]
    service = in_process(project)

    async def label_then_snapshot() -> None:
        async with serving(service) as client:
            response = await client.post("/score", json={"transactions": in_data + outside})
            assert response.status_code == 200
            assert (await client.post("/labels", json={"labels": before})).status_code == 200
            response = await client.post("/score", json={"transactions": next_batch})
            assert response.status_code == 200   # the state's seq past the labels' entry
            await snapshot_pruning_labels(service)
            assert (await client.post("/labels", json={"labels": after})).status_code == 200

    asyncio.run(label_then_snapshot())
    serve = service.params.serve
    snapshot = service.paths.resolve(serve.snapshot)
    # the re-ingest: a chargeback found since turns a label of the old data, which the
    # snapshot holds too, and which the service never received
    data = project / "data/interim/transactions.parquet"
    old = interim(project).query("tx_datetime < @TEST_START").iloc[-1]
    table = pq.read_table(data)
    found = pc.equal(table["transaction_id"], int(old.transaction_id))
    relabelled = {"transaction_id": int(old.transaction_id), "tx_fraud": 1 - int(old.tx_fraud)}
    table = table.set_column(table.schema.get_field_index("tx_fraud"), "tx_fraud", pc.if_else(
        found, pa.scalar(relabelled["tx_fraud"], table["tx_fraud"].type), table["tx_fraud"]))
    pq.write_table(table, data)
    kept = snapshot.stat().st_mtime - 3600   # the export's own time, kept (cp -p, rsync -a)
    os.utime(data, (kept, kept))   # older than the snapshot: the file's time alone would hide it

    def restarted():
        capsys.readouterr()
        journal = Journal(service.journal.path)
        state = app.warm_state(service.paths, serve, service.features.specs, None, snapshot,
                               journal)
        journal.close()
        said = [json.loads(line)["labels_overridden"]
                for line in capsys.readouterr().err.splitlines() if "labels_overridden" in line]
        return state, said

    def rebuilt():   # for a new model, by the service whose state began on the old data
        service.journal = Journal(service.journal.path)
        try:
            return asyncio.run(app.rebuilt_state(service, service.features.specs))
        finally:
            service.journal.close()

    labels = [*before, *after, relabelled]
    started, said = restarted()
    assert said == [2]
    for state in (started, rebuilt()):
        known, label = state.label_states([tx["transaction_id"] for tx in labels])
        assert known.all() and label.tolist() == [tx["tx_fraud"] for tx in labels]
    # without the label audit, the snapshot's or the running state's labels (the old data's
    # too) only fill gaps
    service.paths.resolve(serve.label_audit).unlink()
    online_only = [before[0], before[1], after[0], relabelled]
    for state in (restarted()[0], rebuilt()):
        known, label = state.label_states([tx["transaction_id"] for tx in online_only])
        assert known.all() and label.tolist() == [tx["tx_fraud"] for tx in online_only]


def test_a_state_for_longer_windows_takes_the_online_transactions_the_journal_dropped(
        trained_project: Path, tmp_path: Path, capsys):
    """The journal drops scored entries once they are older than the state's horizon. A state
    built later from the data for features reaching further back (a model with longer
    windows), where the data ends before them, takes those transactions, and the labels the
    journal still holds for them, from the prediction log's parts of this journal: a later
    transaction's 90-day features count them. Where some days' parts are gone (a retention
    job), or all, the start says which span it lacks instead of counting fewer in silence; a
    journal started afresh does not take the parts of the one before. For the same features
    nothing is missing, and it says nothing."""
    import asyncio
    import shutil
    from dataclasses import replace

    import aif.serve.app as app
    from aif.features.specs import feature_specs
    from aif.serve.journal import Journal
    from aif.serve.log import PredictionLog

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 3600, "log_flush_seconds": 0.05,
                                 "max_clock_skew_seconds": 90 * 86400})
    later = interim(project).query("tx_datetime >= @TEST_START")
    day = later.tx_datetime.dt.normalize()
    first_days = [later[day == d].iloc[:5] for d in day.unique()[:2]]   # two days, five each
    early = payload(pd.concat(first_days))
    ahead = first_days[1].iloc[-1:].assign(
        tx_datetime=first_days[1].tx_datetime.iloc[-1] + pd.Timedelta(days=60),
        transaction_id=10**12)   # moves the clock past the early ones' horizon
    fraud = early[-1]["transaction_id"]   # a label received online, for a transaction dropped

    async def score_then_prune() -> None:
        async with serving(service) as client:
            for batch in (early, payload(ahead)):
                response = await client.post("/score", json={"transactions": batch})
                assert response.status_code == 200
            labelled = await client.post("/labels", json={"labels": [
                {"transaction_id": fraud, "tx_fraud": 1}]})
            assert labelled.status_code == 200
            deadline = time.monotonic() + 30
            while service.predictions.confirmed_seq < 2:   # logged: the snapshot may prune
                assert time.monotonic() < deadline, "the prediction log was not written"
                await asyncio.sleep(0.01)
            assert await app.snapshot(service)
            assert [kind for _, kind in service.journal.kinds()] == ["score", "labels"]

    write_params(project, serve={"label_audit": None})   # the journal's label is the one place
    service = in_process(project)
    asyncio.run(score_then_prune())
    last_early = int(first_days[1].tx_datetime.iloc[-1].value // 1000)
    params = load_params(project / "params.yaml")
    longer = feature_specs(replace(params.features, customer_windows_days=(1, 7, 90)),
                           params.label_delay_days)
    card = early[0]["customer_id"]
    probe = ahead.assign(transaction_id=10**12 + 1, customer_id=card,
                         tx_datetime=ahead.tx_datetime + pd.Timedelta(seconds=1))
    log_folder = project / "reports/predictions"

    def started(specs, journal_path: Path) -> tuple[object, dict[str, list]]:
        "A state for `specs` built from the data, the log and the journal; what it said."
        journal = Journal(journal_path)
        log = PredictionLog(log_folder, journal=journal.name,
                            unnamed_through=journal.unnamed_through)
        capsys.readouterr()
        state = app.warm_state(service.paths, params.serve, specs, TEST_START, None, journal,
                               log)
        journal.close()
        said = [json.loads(line) for line in capsys.readouterr().err.splitlines()
                if line.startswith("{")]
        return state, {key: [e[key] for e in said if key in e] for key in
                       ("filled_from_log", "missing_from", "missing_to")} | {
            "not read": [e for e in said if "not read" in e["msg"]]}

    def card_count_90d(state) -> int:
        rows = {c: probe[c].to_numpy() for c in ("transaction_id", "customer_id",
                                                   "terminal_id", "tx_amount")}
        rows["tx_datetime"] = probe.tx_datetime.to_numpy().astype("datetime64[us]").view("i8")
        return int(state.prepare(rows).values["customer_nb_tx_90d"][0])

    def stamp(t: pd.Timestamp) -> str:
        return str(t.floor("s")).replace(" ", "T")

    journal_path = service.journal.path
    assert Journal(journal_path).pruned_through() == last_early
    _, said = started(service.features.specs, journal_path)
    assert said == {"filled_from_log": [], "missing_from": [], "missing_to": [], "not read": []}
    filled, said = started(longer, journal_path)
    assert said == {"filled_from_log": [len(early)], "missing_from": [], "missing_to": [],
                    "not read": []}
    assert len(filled.already_scored([tx["transaction_id"] for tx in early])) == len(early)
    held, label = filled.label_states([fraud])
    assert held[0] and label[0] == 1   # the journal's label, given after the fill

    second_day = first_days[1].tx_datetime.iloc[0].normalize()
    shutil.rmtree(log_folder / f"date={first_days[0].tx_datetime.iloc[0].date()}")
    trimmed, said = started(longer, journal_path)   # the first day's parts deleted
    assert said["filled_from_log"] == [5] and said["missing_to"] == [stamp(second_day)]
    assert said["missing_from"][0] <= stamp(first_days[0].tx_datetime.iloc[0])

    moved = tmp_path / "moved"   # every part gone: the whole span is said
    shutil.move(log_folder, moved)
    lacking, said = started(longer, journal_path)
    assert said["filled_from_log"] == [] and said["not read"] == []
    assert said["missing_to"] == [stamp(first_days[1].tx_datetime.iloc[-1])]
    assert said["missing_from"][0] < stamp(first_days[0].tx_datetime.iloc[0])
    assert not lacking.already_scored([tx["transaction_id"] for tx in early])
    of_card = sum(tx["customer_id"] == card for tx in early)
    assert card_count_90d(filled) == card_count_90d(lacking) + of_card

    shutil.move(moved, log_folder)   # another journal's parts are not its own
    fresh = tmp_path / "fresh/journal.sqlite"
    Journal(fresh).close()
    shutil.copy(journal_path, fresh)   # the same entries, under a journal started afresh
    with Journal(fresh).connect() as db:
        db.execute("UPDATE identity SET name = '00000000000000ff'")
    _, said = started(longer, fresh)
    assert said["missing_from"] and said["filled_from_log"] == [] and said["not read"] == []


def test_a_prediction_log_write_that_fails_is_reported_and_written_later(
        trained_project: Path, tmp_path: Path):
    """The prediction log cannot be written for a while (a file stands where the day's folder
    goes): each failed write is counted and logged, requests go on being answered, the journal
    keeps the rows (the log confirms none of them), and once the folder can be made the next
    flush writes every row, once, in parts named by their journal entries."""
    import asyncio

    project = project_copy(trained_project, tmp_path)
    write_params(project, serve={"snapshot_seconds": 3600, "log_flush_seconds": 0.05})
    rows = interim(project)
    sent = payload(rows[rows.tx_datetime >= TEST_START].iloc[:12])
    day = project / "reports/predictions" / f"date={sent[0]['tx_datetime'][:10]}"
    assert {tx["tx_datetime"][:10] for tx in sent} == {day.name[5:]}   # one day's folder
    day.parent.mkdir(parents=True, exist_ok=True)
    day.write_text("in the way")
    service = in_process(project)

    def failures() -> float:
        return service.collector.get_sample_value("aif_prediction_log_failures_total") or 0.0

    async def serve_while_the_log_fails() -> None:
        async with serving(service) as client:
            for i, tx in enumerate(sent):
                assert (await client.post("/score", json=tx)).status_code == 200
                if i == 5:
                    deadline = time.monotonic() + 30
                    while failures() < 2:
                        assert time.monotonic() < deadline, "no write was tried"
                        await asyncio.sleep(0.01)
                    assert service.predictions.confirmed_seq == 0
            day.unlink()
            deadline = time.monotonic() + 30
            while service.predictions.confirmed_seq < len(sent):
                assert time.monotonic() < deadline, "the log was not written after the fix"
                await asyncio.sleep(0.01)

    asyncio.run(serve_while_the_log_fails())
    logged = pd.read_parquet(project / "reports/predictions")
    assert sorted(logged.transaction_id) == sorted(tx["transaction_id"] for tx in sent)
    from aif.serve.log import PART
    ranges = sorted(tuple(map(int, PART.match(p.name).groups()[1:3])) for p in day.iterdir())
    assert [first for first, _ in ranges] == [1] + [last + 1 for _, last in ranges[:-1]]
    assert ranges[-1][1] == len(sent)   # every journal entry, in parts named by them
