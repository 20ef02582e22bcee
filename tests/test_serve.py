"""The scoring service, run for real: `aif serve` on uvicorn in a child process, spoken to over
loopback HTTP. Parity with the offline pipeline, validation, observability, hot reload."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run, run_env, wait_until_up, write_params
from hypothesis import given, settings
from hypothesis import strategies as st

TEST_START = "2018-06-24"   # the small config's test week, which the replay scores
KEY = "not-a-real-key-serve-7c1"


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    "A private copy of the trained small project (the service writes logs and snapshots)."
    copy = tmp_path / "project"
    shutil.copytree(trained_project, copy, symlinks=True)
    write_params(copy, serve={"poll_seconds": 0.5, "log_flush_seconds": 0.5})
    return copy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(project: Path, *args: str, **env: str):
    "Start `aif serve`, wait until ready, yield (client, process); stop it with SIGTERM."
    port = free_port()
    log = open(project / "serve.log", "w")
    proc = subprocess.Popen(["aif", "serve", "--port", str(port), *args], cwd=project,
                            env=run_env(**env), stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_until_up(lambda: client.get("/ready"), proc, project / "serve.log", "the service")
        yield client, proc
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def interim(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data/interim/transactions.parquet")


def payload(rows: pd.DataFrame) -> list[dict]:
    out = rows[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]].copy()
    out["tx_datetime"] = out.tx_datetime.dt.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return out.to_dict(orient="records")


def logged_matches_offline(project: Path, window: pd.DataFrame) -> pd.DataFrame:
    """The prediction log holds each transaction of `window` once, with the offline features
    (counts exact, the rest to 1e-9) and the offline model's scores (1e-9)."""
    logged = pd.read_parquet(project / "reports/predictions").sort_values("transaction_id")
    assert len(logged) == len(window) and logged.transaction_id.is_unique
    from aif.features.store import read_features
    from aif.modelling.model import Model
    model = Model.load(project / "models")
    offline = read_features(project / "data/processed/features.parquet").to_pandas()
    offline = offline.set_index("transaction_id").loc[logged.transaction_id]
    assert_same_features(logged, offline, model.features)
    scores = model.score(offline[model.features].to_numpy(np.float64))
    np.testing.assert_allclose(logged.score.to_numpy(), scores, rtol=1e-9, atol=1e-12)
    return logged


def assert_same_features(online, offline, names) -> None:
    "Feature by feature, row by row: counts exactly, the rest to 1e-9."
    for name in names:
        got, expected = online[name].to_numpy(), offline[name].to_numpy()
        if np.issubdtype(expected.dtype, np.integer):
            assert np.array_equal(got, expected), name
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=name)


def test_replay_gives_the_offline_features_and_scores(project: Path):
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-07-01")]
    with service(project, "--state-until", TEST_START) as (client, _):
        for i, tx in enumerate(payload(window)[:200]):      # one at a time ...
            r = client.post("/score", json=tx)
            assert r.status_code == 200, r.text
            client.post("/labels", json={"transaction_id": tx["transaction_id"],
                                         "tx_fraud": int(window.tx_fraud.iloc[i])})
        rest = window.iloc[200:]
        for start in range(0, len(rest), 500):                # ... then in batches
            chunk = rest.iloc[start:start + 500]
            r = client.post("/score", json={"transactions": payload(chunk)})
            assert r.status_code == 200, r.text
            client.post("/labels", json={"labels": [
                {"transaction_id": int(i), "tx_fraud": int(y)}
                for i, y in zip(chunk.transaction_id, chunk.tx_fraud, strict=True)]})
    logged = logged_matches_offline(project, window)
    assert set(logged.model_version) == {"workspace"}

    # The monitor takes the log as its current window and sees what it sees offline.
    windows = ["--reference", "2018-06-10:2018-06-24", "--current", f"{TEST_START}:2018-07-01",
               "--no-history", "--no-alert-exit"]
    run(["aif", "monitor", "--run-id", "served", "--current-log", "reports/predictions",
         *windows], project)
    run(["aif", "monitor", "--run-id", "offline", *windows], project)
    served, batch = (json.loads((project / f"reports/monitoring/{r}/summary.json").read_text())
                     for r in ("served", "offline"))
    assert served["features"] == batch["features"] and served["status"] == batch["status"]


def test_bad_requests_get_422_naming_the_field(project: Path):
    tx = payload(interim(project).iloc[-1:])[0]
    tx["transaction_id"] = 10**9
    bad = [({**tx, "tx_amount": -1}, "tx_amount"),
           ({k: v for k, v in tx.items() if k != "customer_id"}, "customer_id"),
           ({**tx, "tx_datetime": "2018-07-09T10:00:00+02:00"}, "tx_datetime"),
           ({**tx, "tx_datetime": "yesterday"}, "tx_datetime"),
           # a seventh digit of a second is refused, not cut to the microsecond
           ({**tx, "tx_datetime": "2018-07-09T10:00:00.1234567"}, "more than 6 digits"),
           ({**tx, "terminal_id": True}, "terminal_id"),    # ids: integers or text
           ({**tx, "terminal_id": " "}, "terminal_id"),
           ({**tx, "terminal_id": [1, 2]}, "terminal_id"),  # not a composite in this mapping
           ({**tx, "tip": 3}, "tip"),
           ({**tx, "transaction_id": 2.5}, "transaction_id"),
           ({"transactions": []}, "transactions"),
           ({"transactions": [tx, tx]}, "unique")]
    with service(project) as (client, _):
        def same_both_ways(**request) -> httpx.Response:
            "A POST /score with no query skips the router; with one it takes it: one answer."
            direct, routed = (client.post(path, **request)
                              for path in ("/score", "/score?explain=false"))
            assert (routed.status_code, routed.content) == (direct.status_code, direct.content)
            return direct

        for body, field in bad:
            r = same_both_ways(json=body)
            assert r.status_code == 422, (body, r.text)
            assert field in r.text, (field, r.text)
        assert same_both_ways(content=b"{not json", headers={
            "content-type": "application/json"}).status_code == 422
        batch = [{**tx, "transaction_id": tx["transaction_id"] + i} for i in range(2000)]
        batch[7]["tx_amount"] = -1
        r = client.post("/score", json={"transactions": batch})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
            "body", "transactions", 7, "tx_amount"]
        assert len(r.content) < 1000    # names the row and the rule, does not echo the batch
        batch[7]["tx_amount"], batch[9]["tx_datetime"] = 1.0, "2018-07-09T10:00:00.0000001"
        r = client.post("/score", json={"transactions": batch})   # the fast path gives way
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
            "body", "transactions", 9, "tx_datetime"]
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        assert set(schemas["Transaction"]["properties"]) == set(tx)   # /score is documented
        first = client.post("/score", json=tx)
        assert first.status_code == 200
        other = same_both_ways(json={**tx, "tx_amount": tx["tx_amount"] + 1})
        assert other.status_code == 409 and "already scored" in other.text   # enters once
        retried = same_both_ways(json=tx)   # a retry gets its first answer, either way
        assert (retried.status_code, retried.content) == (200, first.content)
        assert client.post("/labels", json={"transaction_id": 1, "tx_fraud": 2}).status_code \
            == 422
        twice = client.post("/labels", json={"labels": [   # the same one, as int and as text
            {"transaction_id": 7, "tx_fraud": 1}, {"transaction_id": 8, "tx_fraud": 0},
            {"transaction_id": "7", "tx_fraud": 1}]})
        assert twice.status_code == 422 and twice.json()["detail"][0]["loc"] == [
            "body", "labels", 2, "transaction_id"] and "row 2 is row 0" in twice.text


TRACED = """
import asyncio, json, sys
from pathlib import Path

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aif.config.params import load_params
from aif.config.paths import project_paths
from aif.serve.app import build_service, create_app

spans = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(spans))
if sys.argv[1] == "with-provider":
    trace.set_tracer_provider(provider)
root = Path.cwd()
app = create_app(build_service(project_paths(root), load_params(root / "params.yaml"),
                               None, None))


async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aif") as client:
        reply = await client.post("/score", json=json.loads(sys.argv[2]))
    routes = [s.attributes.get("http.route") for s in spans.get_finished_spans()]
    print(json.dumps({"status": reply.status_code, "routes": routes}))

asyncio.run(main())
"""


def test_with_an_opentelemetry_provider_set_a_score_names_its_route(project: Path,
                                                                     tmp_path: Path):
    """FastAPI's own spans and request metrics name the route its router matched. A /score
    without a query skips the router only while no OpenTelemetry provider is set: with one
    (as `opentelemetry-instrument` sets), its span names /score. In fresh processes: a
    provider is set once per process."""
    script = tmp_path / "traced.py"
    script.write_text(TRACED)
    tx = payload(interim(project).iloc[-1:])[0]
    seen = {}
    for i, mode in enumerate(("with-provider", "without")):
        body = json.dumps({**tx, "transaction_id": 10**9 + i})
        seen[mode] = json.loads(run([sys.executable, str(script), mode, body],
                                    project).stdout.splitlines()[-1])
    assert seen["with-provider"]["status"] == seen["without"]["status"] == 200
    assert "/score" in seen["with-provider"]["routes"]
    assert seen["without"]["routes"] == []   # nothing exported where no provider is set


def test_health_version_metrics_explain_and_logs(project: Path):
    tx = payload(interim(project).iloc[-1:])[0]
    tx["transaction_id"] = 10**9
    tx["tx_amount"] = 7654.32   # an amount no latency or timestamp in the log can spell
    with service(project, WANDB_API_KEY=KEY, AIF_LOG_LEVEL="INFO",
                 OTEL_TRACES_EXPORTER="console") as (client, _):
        assert client.get("/health").json() == {"status": "up"}
        ready = client.get("/ready").json()
        assert ready["status"] == "ready" and ready["state_rows"] > 0
        version = client.get("/version").json()
        assert version["model_version"] == "workspace" and version["features"]
        r = client.post("/score?explain=true", json=tx, headers={"x-request-id": "req-42"})
        assert r.headers["x-request-id"] == "req-42"
        result = r.json()["results"][0]
        assert 0 <= result["fraud_probability"] <= 1 and len(result["top_features"]) == 5
        assert {f["feature"] for f in result["top_features"]} <= set(version["features"])
        metrics = client.get("/metrics").text
        assert 'aif_requests_total{endpoint="/score",status="200"} 1.0' in metrics
        # every series the Grafana dashboard queries is one the service exports
        dashboard = json.loads((REPO / "deploy/grafana/aif-serve.json").read_text())
        queried = {m for p in dashboard["panels"] for t in p["targets"]
                   for m in re.findall(r"aif_[a-z_]+", t["expr"])}
        assert queried and all(m in metrics for m in queried), queried
        assert 'aif_model_info{version="workspace"} 1.0' in metrics
        assert "aif_request_latency_seconds_bucket" in metrics and "aif_score_bucket" in metrics
    lines = [json.loads(line) for line in (project / "serve.log").read_text().splitlines()
             if line.startswith('{"ts"')]
    requests = [e for e in lines if e["msg"] == "request"]
    assert any(e["request_id"] == "req-42" and e["status"] == 200 for e in requests)
    text = (project / "serve.log").read_text()
    # no payload, no secret: the amount nowhere as a number of its own (a latency of 7654.321
    # ms would contain its digits, not be it)
    amount = re.escape(str(tx["tx_amount"]))
    assert not re.search(rf"(?<![\d.]){amount}(?!\d)", text) and KEY not in text
    # OpenTelemetry spans around the feature lookup and the prediction (console exporter here)
    assert '"name": "features"' in text and '"name": "predict"' in text


def test_promotion_and_rollback_switch_the_running_service(project: Path):
    # two registered versions: the workspace model, and one trained with other parameters
    run(["aif", "registry", "register"], project)
    run(["aif", "registry", "promote", "v0.0.1", "--force"], project)
    run(["dvc", "exp", "run", "--temp", "--name", "other", "-S", "train.num_leaves=5",
         "train"], project)
    other = run(["git", "for-each-ref", "--format=%(objectname)", "refs/exps/"],
                project).stdout.split()[0]
    run(["aif", "registry", "register", "--rev", other], project)
    rows = payload(interim(project).iloc[-1:])[0]
    seen, errors, stop = [], [], threading.Event()
    with service(project) as (client, _):
        assert client.get("/version").json()["model_version"] == "fraud-model@v0.0.1"

        def fire():
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post("/score", json={**rows, "transaction_id": 10**9 + i})
                if r.status_code != 200:
                    errors.append(r.text)
                else:
                    seen.append(r.json()["model_version"])

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 60
            while client.get("/version").json()["model_version"] != version:
                assert time.monotonic() < deadline, f"never switched to {version}"
                time.sleep(0.1)

        firing = threading.Thread(target=fire)
        firing.start()
        try:
            run(["aif", "registry", "promote", "v0.0.2", "--force"], project)
            wait_for("fraud-model@v0.0.2")
            run(["aif", "registry", "rollback"], project)
            wait_for("fraud-model@v0.0.1")
            time.sleep(0.3)
        finally:
            stop.set()
            firing.join()
        metrics = client.get("/metrics").text
    assert not errors and len(seen) > 20
    switches = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
    assert switches == ["fraud-model@v0.0.1", "fraud-model@v0.0.2", "fraud-model@v0.0.1"]
    assert "aif_model_reloads_total 2.0" in metrics


def test_sighup_reloads_at_once(project: Path):
    write_params(project, serve={"poll_seconds": 3600})
    run(["aif", "registry", "register"], project)
    with service(project) as (client, proc):
        assert client.get("/version").json()["model_version"] == "workspace"
        run(["aif", "registry", "promote", "v0.0.1", "--force"], project)
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while client.get("/version").json()["model_version"] != "fraud-model@v0.0.1":
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.1)


def test_a_version_that_fails_to_load_is_tried_again_after_a_backoff(project: Path):
    """A promoted version whose model does not load leaves the model in use serving. The
    failure is logged and counted once, not again at every poll (a failing rebuild would hold
    snapshots back each time); SIGHUP tries it at once, and once it loads, the switch is made."""
    write_params(project, serve={"poll_seconds": 0.2})
    run(["aif", "registry", "register"], project)
    materialised = project / "models/serving/v0.0.1"   # where the service puts the version
    materialised.mkdir(parents=True)
    for name in ("model.txt", "model.json"):   # as a disk gone bad would leave them
        (materialised / name).write_text("{not a model")

    def failures() -> list[dict]:
        lines = (project / "serve.log").read_text().splitlines()
        return [e for e in map(json.loads, filter(lambda line: line.startswith('{"ts"'), lines))
                if e["msg"].startswith("switch to v0.0.1 failed")]

    def wait_for(what, name: str) -> None:
        deadline = time.monotonic() + 30
        while not what():
            assert time.monotonic() < deadline, name
            time.sleep(0.1)

    rows = payload(interim(project).iloc[-1:])[0]
    with service(project) as (client, proc):
        run(["aif", "registry", "promote", "v0.0.1", "--force"], project)
        wait_for(failures, "the failed switch was not logged")
        time.sleep(2)   # ten polls
        assert len(failures()) == 1 and failures()[0]["version"] == "v0.0.1"
        assert "60 s" in failures()[0]["msg"]
        fresh = {**rows, "transaction_id": 10**9}
        assert client.post("/score", json=fresh).json()["model_version"] == "workspace"
        assert "aif_model_reload_failures_total 1.0" in client.get("/metrics").text
        os.kill(proc.pid, signal.SIGHUP)   # at once, and the wait doubles
        wait_for(lambda: len(failures()) == 2, "SIGHUP did not try the version again")
        assert "120 s" in failures()[1]["msg"]
        shutil.rmtree(materialised)   # now it can be materialised from the registry
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: client.get("/version").json()["model_version"] ==
                 "fraud-model@v0.0.1", "the version was not switched to once it loaded")
        assert "aif_model_reloads_total 1.0" in client.get("/metrics").text


@pytest.fixture
def redis_url(tmp_path: Path):
    "A real redis-server on a free port, for this test only."
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; "
                    ".ci/run installs it)")
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL)
    import redis
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_a_shared_state_knows_a_retry_by_its_attributes_too(redis_url: str):
    """Redis keeps, with each transaction, a digest of the attributes its features read, the
    one the service compares a retry with: a changed category or coordinate is another
    transaction (409), an unchanged one (a missing coordinate included) the same."""
    from aif.config.params import FeaturesParams
    from aif.features.specs import declared_specs, feature_specs
    from aif.keys import category_keys
    from aif.serve.state_redis import RedisFeatures

    specs = feature_specs(FeaturesParams(groups=("baseline",)), 7) + declared_specs((
        {"name": "category_nb_tx_1d", "entity": "merchant_category", "aggregation": "count",
         "window_days": 1},
        {"name": "card_max_lat_7d", "entity": "customer", "aggregation": "max",
         "inputs": ["customer_lat"], "window_days": 7}), 7)
    rows = {"transaction_id": np.array([11, 12, 13], np.int64),
            "tx_datetime": np.array([1, 2, 3], np.int64) * 60_000_000 + 1_530_000_000_000_000,
            "customer_id": np.array([1, 1, 2], np.int64),
            "terminal_id": np.array([5, 6, 5], np.int64),
            "tx_amount": np.array([10.0, 20.0, 30.0]),
            "merchant_category": category_keys(np.array(["travel", "food", "travel"])),
            "customer_lat": np.array([50.5, np.nan, 48.25])}
    state = RedisFeatures.connect(redis_url, specs)
    state.transact(rows, None, lambda logged: 0)
    found, stored, _ = RedisFeatures.connect(redis_url, specs).stored(rows["transaction_id"])
    assert found.all()
    assert (stored["attributes"] == state.attributes_digest(rows)).all()   # retries: the same
    changed = {**rows, "merchant_category": category_keys(np.array(["food"] * 3)),
               "customer_lat": np.array([50.5, 0.0, 48.26])}
    assert (stored["attributes"] != state.attributes_digest(changed)).all()


def test_two_replicas_share_the_feature_state_in_redis(project: Path, redis_url: str):
    write_params(project, serve={"state": redis_url})
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-06-27")]
    with service(project, "--state-until", TEST_START) as (one, _), \
            service(project, "--state-until", TEST_START) as (two, _):
        replicas = (one, two)
        first_answer = None
        for i, tx in enumerate(payload(window)[:150]):      # alternate, one at a time
            r = replicas[i % 2].post("/score", json=tx)
            assert r.status_code == 200, r.text
            first_answer = first_answer or r.json()
            replicas[(i + 1) % 2].post("/labels", json={
                "transaction_id": tx["transaction_id"], "tx_fraud": int(window.tx_fraud.iloc[i])})
        # a transaction scored by one replica is known to the other: sent again unchanged
        # (a client whose connection broke) it gets its first answer, changed it is a conflict
        again = two.post("/score", json=payload(window.iloc[:1])[0])
        assert again.status_code == 200 and again.json() == first_answer
        changed = {**payload(window.iloc[:1])[0], "terminal_id": 1}
        assert two.post("/score", json=changed).status_code == 409
        rest = window.iloc[150:]
        for j, start in enumerate(range(0, len(rest), 300)):
            chunk = rest.iloc[start:start + 300]
            r = replicas[j % 2].post("/score", json={"transactions": payload(chunk)})
            assert r.status_code == 200, r.text
    logged_matches_offline(project, window)


def test_a_model_scores_with_the_features_it_was_trained_with(project: Path, tmp_path: Path):
    """Trained with a 7-day label delay; params.yaml now says 14. Batch scoring and the service
    still give the model its training-time features (its specs are in model.json)."""
    from aif.config.params import FeaturesParams
    from aif.features.engine import compute_features
    from aif.features.specs import feature_specs
    from aif.features.store import read_columns, read_features
    from aif.modelling.model import Model

    write_params(project, label_delay_days=14)
    model = Model.load(project / "models")
    assert {s.lag_days for s in model.feature_specs(FeaturesParams()) if s.uses_labels} == {7.0}
    offline = read_features(project / "data/processed/features.parquet").to_pandas()
    window = offline[(offline.tx_datetime >= TEST_START) & (offline.tx_datetime < "2018-07-01")]
    # the test can fail: under today's params the features would differ
    columns, _ = read_columns(project / "data/interim/transactions.parquet")
    today = compute_features(columns, feature_specs(FeaturesParams(), 14), FeaturesParams())
    rows = window.index.to_numpy()
    assert not np.allclose(today["terminal_risk_7d"][rows], window.terminal_risk_7d)

    scores = tmp_path / "scores.parquet"
    run(["aif", "score", "--input", "data/interim/transactions.parquet", "--output",
         str(scores), "--since", TEST_START], project)
    scored = pd.read_parquet(scores)
    later = offline[offline.tx_datetime >= TEST_START]
    np.testing.assert_allclose(scored.score, model.score(model.matrix(later)), rtol=0, atol=1e-12)

    transactions = interim(project)
    replay = transactions[(transactions.tx_datetime >= TEST_START)
                          & (transactions.tx_datetime < "2018-07-01")].iloc[:500]
    with service(project, "--state-until", TEST_START) as (client, _):
        r = client.post("/score", json={"transactions": payload(replay)})
        assert r.status_code == 200, r.text
    logged_matches_offline(project, replay)


def test_a_version_registered_before_feature_specs_serves_scores_and_rolls_back(
        project: Path, tmp_path: Path):
    "model.json without specs and params.yaml with the old `registry:` section, as committed."
    info = json.loads((project / "models/model.json").read_text())
    info.pop("feature_specs")
    (project / "models/model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("\ngate:", "\nregistry:"))
    run(["git", "commit", "-q", "-am", "a version from before feature specs"], project)
    run(["aif", "registry", "register"], project)
    run(["aif", "registry", "promote", "v0.0.1", "--force"], project)
    (project / "params.yaml").write_text(params)
    run(["git", "checkout", "-q", "HEAD~1", "--", "models/model.json"], project)
    run(["git", "commit", "-q", "-am", "the same model with its specs"], project)
    run(["aif", "registry", "register"], project)
    run(["aif", "registry", "promote", "v0.0.2", "--force"], project)
    run(["aif", "registry", "rollback"], project)

    rows = interim(project)
    replay = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-07-01")].iloc[:300]
    with service(project, "--state-until", TEST_START) as (client, _):
        assert client.get("/version").json()["model_version"] == "fraud-model@v0.0.1"
        assert client.post("/score", json={"transactions": payload(replay)}).status_code == 200
    logged_matches_offline(project, replay)

    fetched = tmp_path / "v1"
    run(["aif", "registry", "fetch", "--stage", "prod", str(fetched)], project)
    assert "feature_specs" not in json.loads((fetched / "model.json").read_text())
    run(["aif", "score", "--model", str(fetched), "--input", "data/interim/transactions.parquet",
         "--output", str(tmp_path / "scores.parquet"), "--since", TEST_START], project)
    assert set(pd.read_parquet(tmp_path / "scores.parquet").model_version) == {
        "fraud-model@v0.0.1"}


def test_keys_scopes_loopback_and_tls(project: Path, tmp_path: Path):
    "Tokens with scopes; a service other machines can reach needs them; TLS is uvicorn's."
    tokens = tmp_path / "tokens"
    made = run(["aif", "serve", "token", "add", "score"], project,
               AIF_SERVE_TOKENS_FILE=str(tokens))
    score_token = made.stdout.strip().splitlines()[-1]
    labels_token = run(["aif", "serve", "token", "add", "labels"], project,
                       AIF_SERVE_TOKENS_FILE=str(tokens)).stdout.strip().splitlines()[-1]
    assert score_token not in tokens.read_text() and len(tokens.read_text().splitlines()) == 2

    exposed = run(["aif", "serve", "--host", "0.0.0.0"], project, check=False)
    assert exposed.returncode == 2 and "tokens" in exposed.stderr
    assert len(exposed.stderr.strip().splitlines()) == 1

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    tx = payload(interim(project).iloc[-1:])[0]
    tx["transaction_id"] = 10**9 + 7
    port = free_port()
    log = open(project / "serve.log", "w")
    proc = subprocess.Popen(["aif", "serve", "--port", str(port), "--ssl-certfile", str(cert),
                             "--ssl-keyfile", str(key)], cwd=project, stdout=log,
                            stderr=subprocess.STDOUT,
                            env=run_env(AIF_SERVE_TOKENS_FILE=str(tokens)))
    client = httpx.Client(base_url=f"https://127.0.0.1:{port}", timeout=30,
                          verify=ssl.create_default_context(cafile=str(cert)))
    try:
        wait_until_up(lambda: client.get("/ready"), proc, project / "serve.log", "the service")
        assert client.get("/health").status_code == 200          # open, like /ready here
        missing = client.post("/score", json=tx)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/score", json=tx, headers={"authorization": f"Bearer {labels_token}"})
        assert wrong.status_code == 403
        ok = client.post("/score", json=tx, headers={"authorization": f"Bearer {score_token}"})
        assert ok.status_code == 200, ok.text
        labelled = client.post("/labels", json={"transaction_id": tx["transaction_id"],
                                                "tx_fraud": 1},
                               headers={"authorization": f"Bearer {labels_token}"})
        assert labelled.status_code == 200 and labelled.json()["recorded"] == 1
        # a recorded label changes only with admin; a refusal keeps nothing of the request
        tx2 = {**tx, "transaction_id": tx["transaction_id"] + 1}
        assert client.post("/score", json=tx2, headers=bearer(score_token)).status_code == 200
        both = {"labels": [{"transaction_id": tx2["transaction_id"], "tx_fraud": 1},
                           {"transaction_id": tx["transaction_id"], "tx_fraud": 0}]}
        refused = client.post("/labels", json=both, headers=bearer(labels_token))
        assert refused.status_code == 403 and refused.json()["detail"][0]["loc"] == [
            "body", "labels", 1, "tx_fraud"], refused.text
        admin = run(["aif", "serve", "token", "add", "admin"], project,
                    AIF_SERVE_TOKENS_FILE=str(tokens)).stdout.strip().splitlines()[-1]
        changed = client.post("/labels", json=both, headers=bearer(admin))
        assert changed.status_code == 200 and changed.json() == {
            "recorded": 2, "unknown": 0, "changed": 1}
        metrics = client.get("/metrics").text
        assert 'aif_labels_total{outcome="refused"} 2.0' in metrics
        metrics = client.get("/metrics").text
        assert 'aif_requests_total{endpoint="/score",status="401"} 1.0' in metrics
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    text = (project / "serve.log").read_text()
    assert score_token not in text and labels_token not in text
    # every label recorded or changed has its audit line: scope and request, never the token
    audit = [json.loads(line) for line in
             (project / "models/serving/label-audit.jsonl").read_text().splitlines()]
    assert [(a["transaction_id"], a["from"], a["to"], a["scope"]) for a in audit] == [
        (tx["transaction_id"], None, 1, "labels"), (tx2["transaction_id"], None, 1, "admin"),
        (tx["transaction_id"], 1, 0, "admin")]
    assert all(a["request_id"] for a in audit)
    assert admin not in json.dumps(audit) and labels_token not in json.dumps(audit)


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def test_hostile_requests_get_a_4xx_and_change_nothing(project: Path):
    "Oversized, mistyped, over-nested and mislabelled bodies: never a 500, state unchanged."
    write_params(project, serve={"max_body_bytes": 200_000, "max_explain_rows": 3})
    tx = payload(interim(project).iloc[-1:])[0]
    tx["transaction_id"] = 10**9 + 11
    json_header = {"content-type": "application/json"}
    with service(project) as (client, _):
        rows_before = client.get("/ready").json()["state_rows"]
        huge = json.dumps({"transactions": [{**tx, "transaction_id": 10**9 + i}
                                            for i in range(3000)]})
        assert client.post("/score", content=huge, headers=json_header).status_code == 413
        assert client.post("/score", content=json.dumps(tx),
                           headers={"content-type": "text/plain"}).status_code == 415
        for bad in ({**tx, "tx_amount": True}, {**tx, "tx_amount": "12.5"},
                    {**tx, "customer_id": False}, {**tx, "customer_id": 42.0}):
            r = client.post("/score", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["loc"][:2] in (["body", "tx_amount"],
                                                        ["body", "customer_id"])
        deep = client.post("/score", content=b"[" * 3000, headers=json_header)
        assert deep.status_code == 422
        many = {"transactions": [{**tx, "transaction_id": 10**9 + 100 + i} for i in range(4)]}
        explained = client.post("/score?explain=true", json=many)
        assert explained.status_code == 422 and "max_explain_rows" in explained.text
        labels = {"labels": [{"transaction_id": i, "tx_fraud": 0} for i in range(100_001)]}
        assert client.post("/labels", content=json.dumps(labels),
                           headers=json_header).status_code == 413
        assert client.post("/labels", json={"transaction_id": 1, "tx_fraud": True}
                           ).status_code == 422
        # the connection is still good, and nothing above entered the feature state
        assert client.get("/ready").json()["state_rows"] == rows_before
        ok = client.post("/score?explain=true", json={"transactions": many["transactions"][:3]})
        assert ok.status_code == 200 and len(ok.json()["results"][0]["top_features"]) == 5
        metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics and 'status="413"' in metrics


def test_the_clock_refuses_far_future_and_stale_transactions_without_a_trace(project: Path):
    "One payment dated 2099, a batch with one dated 1990: 422, counted, and the state unharmed."
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-07-01")]
    with service(project, "--state-until", TEST_START) as (client, _):
        before = client.get("/ready").json()["state_rows"]
        future = {**payload(window.iloc[:1])[0], "transaction_id": 10**9 + 1,
                  "tx_datetime": "2099-01-01T10:00:00"}
        r = client.post("/score", json=future)
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_ahead"
        batch = payload(window.iloc[:50])
        batch[7] = {**batch[7], "transaction_id": 10**9 + 2, "tx_datetime": "1990-01-01T10:00:00"}
        r = client.post("/score", json={"transactions": batch})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:4] == [
            "body", "transactions", 7, "tx_datetime"]
        assert client.get("/ready").json()["state_rows"] == before   # nothing entered
        # the row of the body, retries before it or not, and a batch of one is a batch
        assert client.post("/score", json={"transactions": batch[:2]}).status_code == 200
        before = client.get("/ready").json()["state_rows"]
        for sent, row in (([batch[7]], 0), ([*batch[:2], batch[7]], 2)):
            r = client.post("/score", json={"transactions": sent})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == [
                "body", "transactions", row, "tx_datetime"]
        assert client.get("/ready").json()["state_rows"] == before
        metrics = client.get("/metrics").text
        assert 'aif_transactions_refused_total{reason="ahead"} 1.0' in metrics
        assert 'aif_transactions_refused_total{reason="late"} 3.0' in metrics
        replay = window.iloc[:300]
        assert client.post("/score", json={"transactions": payload(replay)}).status_code == 200
    logged_matches_offline(project, replay)   # the refused ones cut no history


def test_a_retry_gets_its_first_answer_also_after_a_restart(project: Path):
    """A client whose connection broke sends the same transactions again: each gets the answer
    it got the first time and enters the state and the prediction log once, also in a batch
    that mixes it with new ones and after the service restarted; changed, it is a conflict."""
    rows = interim(project)
    window = rows[(rows.tx_datetime >= TEST_START) & (rows.tx_datetime < "2018-06-27")]
    txs = payload(window.iloc[:60])
    with service(project, "--state-until", TEST_START) as (client, _):
        first = client.post("/score", json={"transactions": txs[:40]})
        assert first.status_code == 200
        again = client.post("/score", json={"transactions": txs[:40]})
        assert again.status_code == 200 and again.json() == first.json()
        mixed = client.post("/score", json={"transactions": txs[30:50]})   # 10 old, 10 new
        assert mixed.status_code == 200
        assert mixed.json()["results"][:10] == first.json()["results"][30:40]
        assert 'aif_retries_answered_total 50.0' in client.get("/metrics").text
    with service(project, "--state-until", TEST_START) as (client, _):   # the journal's
        after = client.post("/score", json={"transactions": txs[:50]})
        assert after.status_code == 200
        assert after.json()["results"] == first.json()["results"] + \
            mixed.json()["results"][10:]
        changed = client.post("/score", json={**txs[5], "tx_amount": txs[5]["tx_amount"] + 0.01})
        assert changed.status_code == 409 and changed.json()["detail"][0]["type"] == "conflict"
        # in a batch, the row is named; one from the data the state was built from, unchanged,
        # is no conflict of content: the state holds it, with no answer to give back
        older = payload(rows[rows.tx_datetime < TEST_START].iloc[-1:])[0]
        for sent, row, kind in (([txs[50], {**txs[5], "tx_amount": 1.0}], 1, "conflict"),
                                ([older], 0, "already_in_state")):
            r = client.post("/score", json={"transactions": sent})
            assert r.status_code == 409 and r.json()["detail"][0]["type"] == kind
            assert r.json()["detail"][0]["loc"] == ["body", "transactions", row,
                                                    "transaction_id"]
        assert client.post("/score", json={"transactions": txs[50:]}).status_code == 200
    logged_matches_offline(project, window.iloc[:60])


def test_requests_generated_from_the_openapi_schema_get_no_500_and_hostile_ones_change_nothing(
        project: Path):
    """Schemathesis reads the running service's OpenAPI document and makes requests from it:
    hostile ones (each violating the schema somewhere) must all get a 4xx and leave the state,
    the counters and the prediction log as they were; valid ones must never get a 500."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    quick = settings(max_examples=40, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))
    with service(project) as (client, _):
        base = str(client.base_url)
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")

        def scored() -> tuple[int, str]:
            metrics = client.get("/metrics").text
            count = re.search(r"^aif_transactions_scored_total (\S+)$", metrics, re.M)
            return client.get("/ready").json()["state_rows"], count.group(1) if count else "0"

        def statuses_of(operation, mode) -> list[int]:
            got: list[int] = []

            @quick
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case):
                r = case.call(base_url=base)
                got.append(r.status_code)
                assert r.status_code < 500, (case.body, r.status_code, r.text[:300])
                if mode == GenerationMode.NEGATIVE:
                    assert r.status_code >= 400, (case.body, r.status_code, r.text[:300])

            send()
            return got

        before = scored()
        for path in ("/score", "/labels"):
            operation = schema[path]["POST"]
            hostile = statuses_of(operation, GenerationMode.NEGATIVE)
            assert len(hostile) >= 20 and scored() == before, (path, hostile)
            statuses_of(operation, GenerationMode.POSITIVE)
        assert client.get("/health").status_code == 200
    errors = [json.loads(line) for line in (project / "serve.log").read_text().splitlines()
              if line.startswith("{") and '"unhandled error"' in line]
    assert errors == []


def test_the_api_docs_render_offline_in_a_browser(project: Path):
    "Swagger UI from the service's own assets: nothing fetched from elsewhere; no ReDoc."
    from browser import browser, requests_made
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    with service(project) as (client, _), browser() as driver:
        base = str(client.base_url).rstrip("/")
        driver.get(f"{base}/docs")
        title = WebDriverWait(driver, 30).until(shown.visibility_of_element_located(
            (By.CSS_SELECTOR, ".swagger-ui .info .title")))
        assert title.text.startswith("aif scoring service")
        WebDriverWait(driver, 30).until(shown.visibility_of_element_located(
            (By.ID, "operations-default-score_score_post")))
        assert [u for u in requests_made(driver) if not u.startswith(base)] == []
        driver.save_screenshot(str(project / "docs.png"))
        assert client.get("/redoc").status_code == 404   # its bundle fetches a CDN logo


def test_a_batch_pauses_the_collector_and_leaves_it_as_it_found_it():
    import gc

    from aif.serve.app import collection_paused

    assert gc.isenabled()
    with collection_paused(True):
        assert not gc.isenabled()
        with collection_paused(True):   # a second batch meanwhile
            assert not gc.isenabled()
        assert not gc.isenabled()       # the switch is the first one's
    assert gc.isenabled()
    with collection_paused(False):      # a single transaction
        assert gc.isenabled()
    with pytest.raises(ValueError), collection_paused(True):
        raise ValueError("a refused batch")
    assert gc.isenabled()


TEXTS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
               max_size=12)   # as fixed-width text holds it (no trailing NUL)


@settings(max_examples=40, deadline=None)
@given(requests=st.lists(st.tuples(st.integers(1, 30), st.sampled_from(["v1", "v2-é"]),
                                   st.lists(TEXTS, min_size=1, max_size=4), st.booleans()),
                         min_size=1, max_size=10),
       late_write=st.booleans())
def test_the_prediction_log_writes_every_row_with_its_texts_exactly(requests, late_write):
    """Rows go to Parquet as added, text columns included (kept as codes in between): per
    request or per row, empty or not ASCII, across flushes, also when a flush is written
    after more rows have come in (the buffers it took are never written again)."""
    import tempfile

    import pyarrow.parquet as pq

    from aif.serve.log import PredictionLog

    added, next_id, waiting = [], 0, []
    with tempfile.TemporaryDirectory() as folder:
        log = PredictionLog(Path(folder))
        for i, (n, version, notes, flush_now) in enumerate(requests):
            rows = pd.DataFrame({
                "transaction_id": np.arange(next_id, next_id + n, dtype=np.int64),
                "tx_datetime": np.datetime64("2018-09-17T23:59:58", "us")
                + np.arange(n) * np.timedelta64(1, "s"),   # a request may span midnight
                "score": np.linspace(0, 1, n), "model_version": version,
                "request_id": f"request-{i}", "note": [notes[j % len(notes)] for j in range(n)]})
            next_id += n
            added.append(rows)
            log.add({c: rows[c].to_numpy(dtype="U64" if rows[c].dtype == object else None)
                     for c in rows}, seq=i + 1)
            if flush_now:
                waiting.append(log.take())
            if not late_write:   # else every flush is written once all rows are in
                for flush in waiting:
                    log.write(flush)
                waiting = []
        for flush in waiting:
            log.write(flush)
        log.flush()
        written = pd.read_parquet(folder).sort_values("transaction_id", ignore_index=True)
        for part in Path(folder).rglob("*.parquet"):   # text, as any reader expects it
            assert str(pq.read_schema(part).field("note").type) == "string"
    expected = pd.concat(added, ignore_index=True)
    assert len(written) == len(expected)
    for c in ("transaction_id", "score", "model_version", "request_id", "note"):
        assert written[c].tolist() == expected[c].tolist(), c
