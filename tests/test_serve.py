"""`freshet serve`: payload parsing, dynamic batching and the prediction log in process; then real server
processes on loopback against the session's registry (`two_rounds`): alias moves and a rollback under
concurrent load with no failed request and every answer from the version it names, broken versions
refused while the old one serves, each bad input, MLflow's client and webhook, SIGTERM with requests in
flight losing no logged prediction."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tasks import model_registry, promote
from tasks.register import RegisterFacts
from tasks.serve.batching import DynamicBatcher
from tasks.serve.payloads import BadRequest, texts_from_csv, texts_from_predict, texts_from_scoring
from tests.pipeline_support import tiny_config
from tests.serve_support import (
    ClientLoad,
    alias_webhook,
    read_prediction_log,
    register_copy,
    register_unloadable_version,
    start_server,
    write_config,
)

TOKEN, WEBHOOK_SECRET = "test-token-0123456789", "test-webhook-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# ------------------------------------------------------------------------------------------ payloads


@pytest.mark.parametrize("document", [
    {"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"]]}},
    {"dataframe_split": {"columns": ["id", "text"], "index": [0, 1], "data": [[1, "a"], [2, "b"]]}},
    {"dataframe_records": [{"text": "a"}, {"text": "b"}]},
    {"inputs": ["a", "b"]},
    {"inputs": {"text": ["a", "b"]}},
    {"instances": [{"text": "a"}, {"text": "b"}], "params": {}},
], ids=["split", "split-with-index", "records", "inputs-list", "inputs-columns", "instances-records"])
def test_every_mlflow_scoring_format_gives_the_texts(document):
    assert texts_from_scoring(document, max_texts=10) == ["a", "b"]


def test_csv_and_predict_bodies():
    assert texts_from_csv(b"text\nfirst one\n\"second, quoted\"\n", 10) == ["first one", "second, quoted"]
    assert texts_from_predict({"texts": ["x"]}, 10) == ["x"]


@pytest.mark.parametrize(("document", "status", "message"), [
    ({"texts": []}, 422, "texts is empty"),
    ({"texts": ["ok", 3]}, 422, "texts[1] is int, not text"),
    ({"texts": "one"}, 422, "texts must be a list"),
    ({"texts": ["t"] * 11}, 413, "at most 10 per request"),
    ({"text": ["a"]}, 400, '{"texts": [...]}'),
    ([1, 2], 400, "got list"),
])
def test_bad_predict_bodies_name_the_problem(document, status, message):
    with pytest.raises(BadRequest) as caught:
        texts_from_predict(document, max_texts=10)
    assert caught.value.status == status and message in caught.value.message


@pytest.mark.parametrize(("document", "status", "message"), [
    ({"data": [["a"]]}, 400, "exactly one of"),
    ({"inputs": ["a"], "instances": ["b"]}, 400, "exactly one of"),
    ({"dataframe_split": {"columns": ["body"], "data": [["a"]]}}, 422, "name a 'text' column"),
    ({"dataframe_split": {"columns": ["text"], "data": [["a", "b"]]}}, 422, "data[0] must be a row of 1"),
    ({"dataframe_records": [{"text": "a"}, {"body": "b"}]}, 422, "dataframe_records[1] has no 'text' field"),
    ({"inputs": [None]}, 422, "inputs[0] is null, not text"),
    ({"instances": []}, 422, "instances is empty"),
])
def test_bad_scoring_payloads_name_the_problem(document, status, message):
    with pytest.raises(BadRequest) as caught:
        texts_from_scoring(document, max_texts=10)
    assert caught.value.status == status and message in caught.value.message, caught.value.message


# ------------------------------------------------------------------------------------------ batching


class Echo:
    """A result that slices like the server's: per text, (its batch's size, the text)."""

    def __init__(self, texts):
        self.rows = [(len(texts), text) for text in texts]

    def slice(self, start, stop):
        return self.rows[start:stop]


def test_concurrent_requests_share_model_calls_and_get_their_own_answers():
    calls: list[list[str]] = []

    def run_batch(texts):
        time.sleep(0.02)  # a model call: requests arriving meanwhile queue up for the next one
        calls.append(list(texts))
        return Echo(texts)

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_texts=8, max_wait_s=0.005)
        await batcher.start()
        jobs = [batcher.enqueue([f"r{index}-a", f"r{index}-b"]) for index in range(10)]
        answers = await asyncio.gather(*(batcher.wait(job, 5) for job in jobs))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert [[text for _, text in answer] for answer in answers] == [[f"r{i}-a", f"r{i}-b"] for i in range(10)]
    assert len(calls) == 3 and max(len(call) for call in calls) == 8  # 20 texts in calls of at most 8
    assert sorted(text for call in calls for text in call) == sorted(f"r{i}-{s}" for i in range(10) for s in "ab")


def test_a_request_that_outlasts_its_timeout_gets_timeout_error():
    calls: list[list[str]] = []

    def run_batch(texts):
        calls.append(list(texts))
        time.sleep(1.0)
        return Echo(texts)

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_texts=8, max_wait_s=0)
        await batcher.start()
        slow = batcher.enqueue(["slow"])
        await asyncio.sleep(0.1)  # the model is busy with it
        queued = batcher.enqueue(["queued behind it"])
        for job in (slow, queued):
            with pytest.raises(TimeoutError):
                await batcher.wait(job, 0.2)
        await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["slow"]]  # timed out while queued: never sent to the model


def test_a_failing_request_fails_alone():
    def run_batch(texts):
        if "poison" in texts:
            raise ValueError("cannot classify poison")
        return Echo(texts)

    async def scenario():
        batcher = DynamicBatcher(run_batch, max_texts=8, max_wait_s=0.005)
        await batcher.start()
        jobs = [batcher.enqueue(["fine"]), batcher.enqueue(["poison"]), batcher.enqueue(["also fine"])]
        results = await asyncio.gather(*(batcher.wait(job, 5) for job in jobs), return_exceptions=True)
        await batcher.stop()
        return results

    fine, poisoned, also_fine = asyncio.run(scenario())
    assert fine == [(1, "fine")] and also_fine == [(1, "also fine")]
    assert isinstance(poisoned, ValueError)


# ------------------------------------------------------------------------------------------ prediction log


def test_prediction_log_writes_day_partitioned_parquet_with_hash_or_scrubbed_text(tmp_path):
    from tasks.serve.metrics import ServeMetrics
    from tasks.serve.prediction_log import PredictionLog, text_digest

    base = tiny_config(tmp_path)
    texts = ["mail me at alice@example.org", "plain"]
    for mode, root in (("hash", "hashed"), ("text", "scrubbed")):
        config = base.model_copy(update={"artifact_root": str(tmp_path / root), "serve": base.serve.model_copy(
            update={"prediction_log": base.serve.prediction_log.model_copy(
                update={"store_text": mode, "scrub_pii": True, "flush_every_s": 3600})})})
        log = PredictionLog(config, ServeMetrics())
        log.start()
        assert log.record(endpoint="predict", request_id="r1", model="m", version="7", texts=texts,
                          labels=["alpha", "beta"], confidences=[0.9, 0.6]) == 2
        assert read_prediction_log(config.artifact_root) == []  # buffered until a flush
        log.close()
        rows = read_prediction_log(config.artifact_root)
        assert [row["text_sha256"] for row in rows] == [text_digest(text) for text in texts]
        assert {(row["model_version"], row["request_id"], row["endpoint"]) for row in rows} == {("7", "r1", "predict")}
        assert [row["label"] for row in rows] == ["alpha", "beta"] and rows[0]["confidence"] == 0.9
        assert str(rows[0]["date"]) == rows[0]["time"].strftime("%Y-%m-%d")
        stored = [row["text"] for row in rows]
        assert stored == ([None, None] if mode == "hash" else ["mail me at <EMAIL>", "plain"])
    assert not list((tmp_path / "hashed").rglob(".part-*")), "no temporary part is left behind"


def test_the_prediction_log_is_an_airflow_asset(tmp_path):
    from freshet_airflow.assets import prediction_log_asset

    config = tiny_config(tmp_path)
    asset = prediction_log_asset(config)
    assert asset.name == "freshet.unit.prediction_log"
    assert asset.uri == (tmp_path / "artifacts" / "predictions").as_uri()


# ------------------------------------------------------------------------------------------ real servers


@pytest.fixture(scope="module")
def registry(two_rounds, tmp_path_factory):
    """The session's registry with champion on version 1 and a third version (version 1's files and run):
    (config, config path, {version: the serving sample it must reproduce}, versions). Aliases are put back."""
    config, store, first, second = two_rounds
    client = model_registry.client(config)
    name = config.mlflow.model_name
    saved = {alias: model_registry.version_by_alias(config, alias) for alias in ("champion", "previous")}
    one, two = RegisterFacts.of(first["register"]).version, RegisterFacts.of(second["register"]).version
    three = register_copy(client, name, one, run_id_tag="run-1")
    samples = {version: json.loads(store.local_path(manifests["compress"].output("serving_sample").uri).read_text())
               for version, manifests in ((one, first), (two, second))}
    assert samples[one]["texts"] == samples[two]["texts"], "both rounds sample the frozen slice's first rows"
    samples[three] = samples[one]
    client.set_registered_model_alias(name, "champion", one)
    if saved["previous"] is not None:
        client.delete_registered_model_alias(name, "previous")
    path = write_config(config, tmp_path_factory.mktemp("serve") / "pipeline.yaml")
    yield config, path, samples, (one, two, three)
    for alias, version in saved.items():
        if version is not None:
            client.set_registered_model_alias(name, alias, version.version)
        else:
            client.delete_registered_model_alias(name, alias)


# int8 ONNX variants quantize activations per model call, so a text's probability moves (here by up to ~0.015)
# with the texts that share its batch. The load sends texts on which the two rounds' models differ by more than
# twice that, so an answer is told apart by the version it must come from.
BATCHED_TOLERANCE = 0.03


def assert_answered_by(reply, samples):
    """The reply's label and probability are what the version it names computes for its text, and not what
    the other model computes."""
    sample = samples[reply.version]
    top = sorted(sample["probabilities"][reply.text_index], reverse=True)
    assert abs(reply.probability - top[0]) <= BATCHED_TOLERANCE, (reply, top[0])
    assert reply.label == sample["labels"][reply.text_index] or top[0] - top[1] <= BATCHED_TOLERANCE, reply
    for other in samples.values():
        other_top = max(other["probabilities"][reply.text_index])
        assert abs(reply.probability - top[0]) <= abs(reply.probability - other_top), (reply, top[0], other_top)


def telling_apart(samples, one, two) -> list[int]:
    """Sample texts on which versions `one` and `two` differ by more than twice the batching tolerance."""
    pairs = zip(samples[one]["probabilities"], samples[two]["probabilities"])
    return [index for index, (left, right) in enumerate(pairs) if abs(max(left) - max(right)) > 2 * BATCHED_TOLERANCE]


def only(samples, indices):
    """The samples cut to the texts at `indices` (the load sends those)."""
    keys = ("texts", "labels", "probabilities")
    return {version: {**sample, **{key: [sample[key][i] for i in indices] for key in keys}}
            for version, sample in samples.items()}


def wait_until_every_client_heard(load, version, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(any(reply.version == version for reply in replies[-20:]) for replies in load.replies):
            return
        time.sleep(0.05)
    raise AssertionError(f"not every client got an answer from version {version}")


def test_follows_two_alias_moves_and_a_rollback_under_load_with_no_failed_request(registry, tmp_path):
    config, path, samples, (one, two, three) = registry
    moves = [(two, lambda: promote.move_champion(config, two, one, reason="serve test: move 1")),
             (three, lambda: promote.move_champion(config, three, two, reason="serve test: move 2")),
             (two, lambda: promote.rollback(config, who="serve-test", why="rollback under load"))]
    telling = telling_apart(samples, one, two)
    assert len(telling) >= 5, "the versions must be told apart by their answers"
    samples = only(samples, telling)
    server = start_server(path, tmp_path / "server.log", overrides=("serve.poll_interval_s=0.3",))
    try:
        server.wait_for(lambda health: health["version"] == one, f"version {one} to serve")
        with ClientLoad(server.url, samples[one]["texts"], clients=4) as load:
            for version, move in moves:
                time.sleep(1.0)
                move()
                server.wait_for(lambda health, version=version: health["version"] == version == health["alias_version"],
                                f"the server to follow the alias to version {version}")
                wait_until_every_client_heard(load, version)
            time.sleep(1.0)
        replies = load.all_replies
        failed = [reply for reply in replies if reply.status != 200]
        assert not failed, f"{len(failed)} of {len(replies)} requests failed, first: {failed[0]}"
        assert len(replies) > 100
        for reply in replies:
            assert_answered_by(reply, samples)
        # Each client's requests are sequential: after the swap it never hears from the old model again.
        for client_replies in load.replies:
            versions = [reply.version for reply in client_replies]
            changes = [version for before, version in zip([None, *versions], versions) if version != before]
            assert changes == [one, two, three, two], changes
        health = server.health()
        assert health["swaps"] == 4 and health["refused"] == [] and health["alias"] == "champion"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'freshet_serve_reloads_total{outcome="swapped"} 4.0' in metrics
        assert f"freshet_serve_model_version {float(two)}" in metrics
        assert 'freshet_serve_requests_total{endpoint="predict",status="200"}' in metrics
        for histogram in ("batch_texts", "request_duration_seconds", "model_call_seconds"):
            assert f"freshet_serve_{histogram}_bucket" in metrics
    finally:
        assert server.stop() in (0, -15), server.log_tail()


def test_mlflow_clients_and_formats_work_unchanged(registry, tmp_path):
    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    config, path, samples, (_one, two, _three) = registry
    model_registry.client(config).set_registered_model_alias(config.mlflow.model_name, "champion", two)
    server = start_server(path, tmp_path / "server.log")
    try:
        server.wait_for(lambda health: health["version"] == two, f"version {two} to serve")
        host, port = server.url.removeprefix("http://").split(":")
        mlflow_client = ScoringServerClient(host, int(port))
        mlflow_client.wait_server_ready(timeout=30)
        texts = samples[two]["texts"][:5]
        predictions = mlflow_client.invoke(pd.DataFrame({"text": texts})).get_predictions()
        assert list(predictions.columns) == ["label", "probability"] and len(predictions) == 5
        assert list(predictions["label"]) == samples[two]["labels"][:5]
        for body in ({"inputs": texts}, {"instances": [{"text": text} for text in texts]},
                     {"dataframe_split": {"columns": ["text"], "data": [[text] for text in texts]}}):
            document = httpx.post(f"{server.url}/invocations", json=body).json()
            assert [row["label"] for row in document["predictions"]] == samples[two]["labels"][:5]
            assert document["model_version"] == two
        csv = httpx.post(f"{server.url}/invocations", content=pd.DataFrame({"text": texts}).to_csv(index=False),
                         headers={"Content-Type": "text/csv"})
        assert [row["label"] for row in csv.json()["predictions"]] == samples[two]["labels"][:5]
        predict = httpx.post(f"{server.url}/predict", json={"texts": texts}).json()
        assert predict["model_version"] == two and predict["labels"] == samples[two]["labels"][:5]
        assert set(predict["probabilities"][0]) == set(config.labels)
        assert abs(sum(predict["probabilities"][0].values()) - 1) < 1e-4
        health = server.health()
        assert health["alias"] == "champion" and health["loaded_at"] and health["check"]["kind"] == "serving_sample"
        assert health["calls"] == "onnx session"  # the tiny model's variant is ONNX: the checked direct path
        assert httpx.get(f"{server.url}/ready").status_code == 200
    finally:
        server.stop()


@pytest.fixture(scope="module")
def secured_server(registry, tmp_path_factory):
    """Auth on, webhook secret, no polling to speak of (the webhook moves it), small limits, and a prediction
    log that writes only at shutdown. The last test of the module stops it with SIGTERM."""
    config, path, _, (_one, two, _three) = registry
    model_registry.client(config).set_registered_model_alias(config.mlflow.model_name, "champion", two)
    directory = tmp_path_factory.mktemp("secured")
    server = start_server(path, directory / "server.log", env={"FRESHET_SERVE_TOKEN": TOKEN,
                                                                "FRESHET_SERVE_WEBHOOK_SECRET": WEBHOOK_SECRET},
                          overrides=("serve.poll_interval_s=3600", "serve.require_auth=true",
                                     "serve.max_request_texts=8", "serve.max_body_bytes=4096",
                                     "serve.prediction_log.flush_every_s=3600",
                                     "serve.prediction_log.flush_every_rows=1000000"))
    server.wait_for(lambda health: health["version"] == two, f"version {two} to serve")
    yield server
    server.stop()


def test_each_bad_input_is_a_4xx_naming_the_problem_and_the_server_keeps_serving(secured_server):
    url = secured_server.url

    def chunks():
        for _ in range(10):
            yield b'{"texts": ["' + b"x" * 1000 + b'"]}'

    cases = [
        ("no token", {"url": f"{url}/predict", "json": {"texts": ["a"]}}, 401, "bearer token"),
        ("wrong token", {"url": f"{url}/predict", "json": {"texts": ["a"]},
                         "headers": {"Authorization": "Bearer nope"}}, 401, "bearer token"),
        ("invalid JSON", {"url": f"{url}/predict", "content": b'{"texts": [', "headers": AUTH}, 400, "invalid JSON"),
        ("empty list", {"url": f"{url}/predict", "json": {"texts": []}, "headers": AUTH}, 422, "texts is empty"),
        ("non-text item", {"url": f"{url}/predict", "json": {"texts": ["a", {"b": 1}]}, "headers": AUTH}, 422,
         "texts[1] is dict, not text"),
        ("too many texts", {"url": f"{url}/predict", "json": {"texts": ["a"] * 9}, "headers": AUTH}, 413, "at most 8"),
        ("oversized body", {"url": f"{url}/predict", "json": {"texts": ["x" * 5000]}, "headers": AUTH}, 413,
         "limit is 4096"),
        ("oversized chunked body", {"url": f"{url}/predict", "content": chunks(), "headers": AUTH}, 413,
         "exceeds 4096"),
        ("unknown format", {"url": f"{url}/invocations", "json": {"data": [["a"]]}, "headers": AUTH}, 400,
         "exactly one of"),
        ("no text column", {"url": f"{url}/invocations", "headers": AUTH,
                            "json": {"dataframe_split": {"columns": ["body"], "data": [["a"]]}}}, 422, "'text' column"),
        ("media type", {"url": f"{url}/invocations", "content": b"a", "headers": {**AUTH, "Content-Type": "image/png"}},
         415, "'image/png' is not supported"),
    ]
    with httpx.Client(timeout=10) as client:
        for name, request, status, message in cases:
            response = client.post(**request)
            assert response.status_code == status, (name, response.status_code, response.text)
            assert message in response.json()["message"], (name, response.text)
            good = client.post(f"{url}/predict", json={"texts": ["still serving"]}, headers=AUTH)
            assert good.status_code == 200, (name, good.text)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'freshet_serve_errors_total{code="UNAUTHENTICATED",endpoint="predict"} 2.0' in metrics
    assert 'freshet_serve_requests_total{endpoint="predict",status="413"} 3.0' in metrics


def test_broken_versions_are_refused_while_the_old_one_keeps_serving(registry, secured_server, tmp_path):
    config, _, samples, (one, two, _three) = registry
    name = config.mlflow.model_name
    client = model_registry.client(config)
    unloadable = register_unloadable_version(config, tmp_path)
    wrong_sample = register_copy(client, name, two, run_id_tag="run-1")  # version 2's model, run 1's sample
    url = secured_server.url

    with ClientLoad(url, samples[two]["texts"], clients=2, headers=AUTH) as load:
        for broken, reason in ((unloadable, "deliberately broken: this model cannot load"),
                               (wrong_sample, "failed its serving check (serving_sample)")):
            client.set_registered_model_alias(name, "champion", broken)
            body, headers = alias_webhook(name, "champion", broken, WEBHOOK_SECRET)
            accepted = httpx.post(f"{url}/webhooks/mlflow", content=body, headers=headers)
            assert accepted.status_code == 202, accepted.text
            health = secured_server.wait_for(
                lambda health, broken=broken: any(entry["version"] == broken for entry in health["refused"]),
                f"version {broken} to be refused")
            refusal = next(entry for entry in health["refused"] if entry["version"] == broken)
            assert reason in refusal["reason"], refusal
            assert health["version"] == two and health["alias_version"] == broken and health["status"] == "refused"
            metrics = httpx.get(f"{url}/metrics").text
            assert f"freshet_serve_refused_version {float(broken)}" in metrics
            assert f"freshet_serve_model_version {float(two)}" in metrics
        time.sleep(0.5)
    replies = load.all_replies
    assert replies and all(reply.status == 200 and reply.version == two for reply in replies), [
        reply for reply in replies if reply.status != 200 or reply.version != two][:3]
    for reply in replies:
        assert_answered_by(reply, {two: samples[two]})
    assert 'freshet_serve_reloads_total{outcome="refused"} 2.0' in httpx.get(f"{url}/metrics").text

    # Only MLflow's signed deliveries count; others are refused and move nothing.
    body, headers = alias_webhook(name, "champion", two, "not-the-secret")
    assert httpx.post(f"{url}/webhooks/mlflow", content=body, headers=headers).status_code == 401
    body, headers = alias_webhook(name, "champion", two, None)
    assert httpx.post(f"{url}/webhooks/mlflow", content=body, headers=headers).status_code == 401
    body, headers = alias_webhook("another-model", "champion", two, WEBHOOK_SECRET)
    assert httpx.post(f"{url}/webhooks/mlflow", content=body, headers=headers).json()["accepted"] is False
    # Back to a good version: the next webhook swaps it in (rollback by alias move).
    client.set_registered_model_alias(name, "champion", one)
    body, headers = alias_webhook(name, "champion", one, WEBHOOK_SECRET)
    assert httpx.post(f"{url}/webhooks/mlflow", content=body, headers=headers).status_code == 202
    secured_server.wait_for(lambda health: health["version"] == one and health["status"] == "serving",
                            f"version {one} to serve again")


def test_sigterm_with_requests_in_flight_loses_no_logged_prediction(registry, secured_server):
    """Runs last: it stops the module's secured server."""
    config, _, samples, _ = registry
    with ClientLoad(secured_server.url, samples[next(iter(samples))]["texts"], clients=6, headers=AUTH) as load:
        deadline = time.monotonic() + 30
        while load.count() < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert secured_server.health()["prediction_log"]["pending_rows"] > 0  # nothing written before shutdown
        returncode = secured_server.stop()
    assert returncode in (0, -15), secured_server.log_tail()
    replies = load.all_replies
    acknowledged = {reply.request_id for reply in replies if reply.status == 200}
    refused = [reply for reply in replies if reply.status not in (200, 0)]
    assert not refused, f"requests in flight at SIGTERM were failed: {refused[:3]}"
    assert len(acknowledged) >= 60
    during_shutdown = [reply for reply in replies if reply.status == 200 and reply.at > secured_server.signalled_at]
    assert during_shutdown, "no request was in flight at SIGTERM: the test proves nothing"
    logged = {}
    for row in read_prediction_log(config.artifact_root):
        logged.setdefault(row["request_id"], []).append(row)
    missing = acknowledged - logged.keys()
    assert not missing, f"{len(missing)} acknowledged requests are not in the prediction log"
    assert all(len(logged[request_id]) == 1 for request_id in acknowledged)
    assert "Application shutdown complete" in secured_server.log_path.read_text()
