"""`ctrain serve`: a real server on 127.0.0.1, spoken to over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.storage import Store
from tests.conftest import make_table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TOKEN = "s3cret-token"


@pytest.fixture(params=[None])
def server(request, tiny_store: str) -> Iterator[tuple[str, str]]:
    """The tiny store served on a free loopback port: (base url, store uri); with
    `@pytest.mark.parametrize("server", [TOKEN], indirect=True)` requests need the token."""
    import uvicorn

    from continual_trainer.serve import wait_ready
    from continual_trainer.serve.app import app
    from continual_trainer.serve.served import Served

    served = Served(tiny_store, poll=0.1)
    served.start()
    port = _free_port()
    asgi = app(served, max_body=20_000, token=request.param)
    config = uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="error")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    yield url, tiny_store
    running.should_exit = True
    thread.join(timeout=10)
    served.stop()


def _post(url: str, body: bytes, kind: str = "application/json", token: str | None = None) -> tuple[int, dict, dict]:
    headers = {"content-type": kind, **({"authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus exposition (None if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def _rows(n: int = 5, seed: int = 3) -> bytes:
    table = make_table(n=n, seed=seed).drop(["y"])
    return json.dumps({"rows": table.to_pylist()}).encode()


def test_predictions_over_http_are_ctrain_predicts(server, tmp_path: Path) -> None:
    url, uri = server
    with urllib.request.urlopen(f"{url}/health") as r:
        health = json.loads(r.read())
    current = Store.open(uri).current()
    assert health == {"status": "ready", "version": current}
    status, answer, headers = _post(f"{url}/predict", _rows(7))
    assert status == 200 and answer["version"] == current and headers["x-ctrain-version"] == current
    assert len(answer["predictions"]) == len(answer["probabilities"]) == 7
    from continual_trainer.cli import main

    pq.write_table(make_table(n=7, seed=3).drop(["y"]), tmp_path / "rows.parquet")
    assert main(["predict", "--store", uri, "--data", str(tmp_path / "rows.parquet"), "--out",
                 str(tmp_path / "out.parquet"), "--quiet"]) == 0  # fmt: skip
    assert pq.read_table(tmp_path / "out.parquet").column("prediction").to_pylist() == answer["predictions"]


def test_bad_requests_get_one_line_and_the_right_status(server) -> None:
    url, _ = server
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'{"rows": []}', "application/json", 422, "at least one row"),
        (b'{"rows": [{"f0": 1.0}]}', "application/json", 422, "missing feature column(s)"),
        (b"f0,f1\n1,2\n", "text/csv", 415, "send rows as application/json"),
        (_rows(300), "application/json", 413, "at most 20,000"),
    ]
    for body, kind, status, words in cases:
        got, answer, _ = _post(f"{url}/predict", body, kind)
        assert (got, list(answer)) == (status, ["error"]) and words in answer["error"], answer
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_a_promotion_is_served_without_failing_a_request(server) -> None:
    """Clients keep sending while two promotions happen: every request succeeds, each answer names
    a version that was current at some moment of its request (give or take the server's poll),
    both versions answer, and the last answers name the last promotion."""
    url, uri = server
    from continual_trainer import open_store

    store = open_store(uri)
    first = Store.open(uri).current()
    outcome = store.update("finetune_new", epochs=2, promote="never")
    second = outcome.version
    seen: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(2000):  # bounded
            if stop.is_set():
                return
            start = time.monotonic()
            status, answer, _ = _post(f"{url}/predict", _rows(3))
            seen.append((start, time.monotonic(), status, answer.get("version", answer.get("error"))))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    current = [(0.0, 0.0, first)]  # (promotion called, returned, the version it made current)
    time.sleep(0.5)
    for version in (second, first):
        called = time.monotonic()
        store.promote(version)
        current.append((called, time.monotonic(), version))
        time.sleep(0.8)
    stop.set()
    for c in clients:
        c.join(timeout=30)

    def current_during(start: float, end: float, slack: float = 0.5) -> set[str]:
        out = set()
        for i, (called, _, version) in enumerate(current):
            until = current[i + 1][1] if i + 1 < len(current) else float("inf")  # the next promotion returned
            if called <= end and until + slack >= start:
                out.add(version)
        return out

    assert seen and all(status == 200 for _, _, status, _ in seen), [s for s in seen if s[2] != 200][:3]
    wrong = [(a, b, v) for a, b, _, v in seen if v not in current_during(a, b)]
    assert wrong == [], wrong[:3]
    assert {v for *_, v in seen} == {first, second}
    assert max(seen)[3] == first


def test_a_version_that_fails_its_checksum_is_refused_and_the_old_one_serves(server) -> None:
    url, uri = server
    from continual_trainer import open_store

    first = Store.open(uri).current()
    bad = open_store(uri).update("finetune_new", epochs=2, promote="never").version
    member = next((Path(uri) / "models" / bad).glob("member-*.keras"))
    good = member.read_bytes()
    member.write_bytes(good[:-10] + b"0123456789")  # damaged after it was committed
    with pytest.raises(UserError, match="fails its sha256 check"):  # promote refuses a damaged version...
        Store.open(uri).promote(bad, first, by="test")
    Store.open(uri)._write("CURRENT", f"{bad}\n".encode())  # ... so CURRENT is changed by hand, as rot would
    time.sleep(1.0)
    with urllib.request.urlopen(f"{url}/version") as r:
        state = json.loads(r.read())
    assert state["version"] == first and bad in state["refused"]
    status, answer, _ = _post(f"{url}/predict", _rows(2))
    assert status == 200 and answer["version"] == first
    member.write_bytes(good)  # repaired: the server tries the version again
    time.sleep(1.0)
    with urllib.request.urlopen(f"{url}/version") as r:
        state = json.loads(r.read())
    assert state["version"] == bad and bad not in state["refused"]


def test_an_arrow_stream_body_is_scored_like_json_and_metrics_count_it(server) -> None:
    import pyarrow as pa

    url, _ = server
    table = make_table(n=40, seed=3).drop(["y"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    status, answer, _ = _post(f"{url}/predict", sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
    assert status == 200
    as_json = _post(f"{url}/predict", json.dumps({"rows": table.to_pylist()}).encode())[1]
    assert answer["predictions"] == as_json["predictions"]
    assert _post(f"{url}/predict", b"garbage", "application/vnd.apache.arrow.stream")[0] == 400
    with urllib.request.urlopen(f"{url}/metrics") as r:
        text = r.read().decode()
    version = answer["version"]
    assert sample(text, "ctrain_requests_total", version=version, status="200") == 2
    assert sample(text, "ctrain_requests_total", version=version, status="400") == 1
    assert sample(text, "ctrain_rows_total", version=version) == 80
    assert sample(text, "ctrain_request_seconds_count") == 3 and sample(text, "ctrain_reloads_total") == 1
    with urllib.request.urlopen(f"{url}/") as r:
        page = r.read().decode()
    assert version in page and "<table>" in page


@pytest.mark.parametrize("server", [TOKEN], indirect=True)
def test_with_a_token_only_requests_bearing_it_are_answered(server) -> None:
    url, _ = server
    assert _post(f"{url}/predict", _rows(2))[0] == 401
    assert _post(f"{url}/predict", _rows(2), token="s3cret-tokeN")[0] == 401
    assert _post(f"{url}/predict", _rows(2), token=TOKEN)[0] == 200
    for path in ("/version", "/metrics", "/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}{path}")
        assert refused.value.code == 401
    with urllib.request.urlopen(f"{url}/health") as r:  # a load balancer's probe needs no token
        assert r.status == 200


def test_serve_mistakes_are_one_line_and_exit_2(tiny_store: str, tmp_path: Path, capsys) -> None:
    from continual_trainer.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--store", tiny_store, "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", "--store", tiny_store, "--token-file", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--store", tiny_store, "--token-file", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ctrain: error: --token-file {tmp_path / 'missing'}: cannot be read (FileNotFoundError)",
                   f"ctrain: error: --token-file {tmp_path / 'empty'}: is empty"]  # fmt: skip


async def _asgi_post(asgi, body: bytes, kind: bytes = b"application/json") -> tuple[int, dict]:
    """One request through the ASGI application itself (no sockets): its status and JSON answer."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]}  # fmt: skip
    await asgi(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_batching_on_and_off_gives_identical_answers_and_batches_requests_that_arrive_together(
    tiny_store: str,
) -> None:
    import asyncio

    from continual_trainer.serve.app import app
    from continual_trainer.serve.served import Served

    bodies = [_rows(n, seed=s) for s, n in enumerate([1, 3, 1, 7, 2, 1, 5, 1, 1, 4] * 2)]
    answers = {}
    for rows in (1, 64):
        served = Served(tiny_store, batch_rows=rows, log_sample=0)
        served.start()
        asgi = app(served)

        async def all_at_once(asgi=asgi) -> list:
            return await asyncio.gather(*(_asgi_post(asgi, b) for b in bodies))

        answers[rows] = asyncio.run(all_at_once())
        served.stop()
        assert all(status == 200 for status, _ in answers[rows])
        calls = served.current.batcher.calls
        assert calls == (len(bodies) if rows == 1 else 1), calls  # together: one call for all twenty
    for (_, alone), (_, batched) in zip(answers[1], answers[64], strict=True):
        assert alone["predictions"] == batched["predictions"]
        assert alone["probabilities"] == batched["probabilities"]
        assert len(alone["ids"]) == len(batched["ids"]) == len(alone["predictions"])


def test_hostile_bodies_get_a_4xx_in_one_line_and_no_traceback_reaches_the_log(
    server, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = server
    one = {f"f{i}": 0.5 for i in range(5)}
    cases = [
        (
            json.dumps({"rows": [one]}).encode()[:-3] + b', "deep": ' + b"[" * 5_000 + b"]" * 5_000 + b"}]}",
            400,
            "nested too deep",
        ),
        (
            b'{"rows": [{"f0": ' + b"[" * 5_000 + b"]" * 5_000 + b"}]}",
            422,
            "'f0', row 0: expected a number, got a list",
        ),
        (json.dumps({"rows": [{**one, "f0": 2**70}]}).encode(), 422, "beyond ±1e15"),
        (json.dumps({"rows": [{**one, "f0": True, "f1": "2.5", "f2": 3}]}).encode(), 200, None),
        (b"\xff\xfe\x00garbage", 400, "not valid JSON"),
        (json.dumps({"rows": [{**one, "f3": None}]}).encode(), 422, "feature 'f3' has a missing value (null) in row 0"),
    ]
    for body, status, words in cases:
        got, answer, headers = _post(f"{url}/predict", body)
        assert got == status, (got, answer)
        if words:
            assert list(answer) == ["error"] and words in answer["error"] and "\n" not in answer["error"]
            assert headers.get("x-request-id")
    # a client that goes away before its body ends
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        )
        s.sendall(b'{"rows": [')
    time.sleep(0.5)
    assert _post(f"{url}/predict", _rows(2))[0] == 200  # still answering
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


@pytest.mark.slow
def test_workers_share_the_port_each_reloads_on_promotion_and_metrics_add_up(tiny_store: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from continual_trainer import open_store
    from continual_trainer.data.storage import Store
    from continual_trainer.predlog import read_log
    from continual_trainer.serve import wait_ready

    store = open_store(tiny_store)
    first = store.current
    second = store.update("finetune_new", epochs=2, promote="never").version
    port = _free_port()
    ctrain = os.path.join(os.path.dirname(sys.executable), "ctrain")
    argv = [ctrain, "serve", "--store", tiny_store, "--port", str(port), "--workers", "2", "--poll", "0.2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 120)
        assert proc.stdout.readline().startswith(f"serving version {first} of ")
        pids, sent, rows = set(), 0, 0
        for _ in range(200):  # a new connection each: the workers take turns accepting them
            status, _, _ = _post(f"{url}/predict", _rows(3))
            assert status == 200
            sent, rows = sent + 1, rows + 3
            with urllib.request.urlopen(f"{url}/version") as r:
                pids.add(json.loads(r.read())["pid"])
            if len(pids) == 2 and sent >= 20:
                break
        assert len(pids) == 2, pids
        store.promote(second)
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(seen) < 2 or set(seen.values()) != {second}):
            status, _, _ = _post(f"{url}/predict", _rows(3))
            sent, rows = sent + 1, rows + 3
            assert status == 200
            with urllib.request.urlopen(f"{url}/version") as r:
                state = json.loads(r.read())
            seen[state["pid"]] = state["version"]
        assert set(seen) == pids and set(seen.values()) == {second}, seen
        with urllib.request.urlopen(f"{url}/metrics") as r:
            text = r.read().decode()
        total = sum(sample(text, "ctrain_requests_total", version=v, status="200") or 0 for v in (first, second))
        assert total == sent, (total, sent)
        assert sample(text, "ctrain_reloads_total") == 4  # two workers, two versions each
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.count(f"serving version {second} (was {first})") == 2, err
    assert err.strip().endswith("stopped"), err
    logged = read_log(Store.open(tiny_store))
    assert logged is not None and logged.num_rows == rows
