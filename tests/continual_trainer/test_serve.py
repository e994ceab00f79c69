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

    from continual_trainer.serve import Served, app, wait_ready

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
    a version that was current during the test, and the last answers name the last promotion."""
    url, uri = server
    from continual_trainer import open_store

    store = open_store(uri)
    first = Store.open(uri).current()
    outcome = store.update("finetune_new", epochs=2, promote="never")
    second = outcome.version
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        for _ in range(2000):  # bounded
            if stop.is_set():
                return
            status, answer, _ = _post(f"{url}/predict", _rows(3))
            seen.append((status, answer.get("version", answer.get("error"))))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for c in clients:
        c.start()
    time.sleep(0.5)
    store.promote(second)
    time.sleep(0.8)
    store.promote(first)
    time.sleep(0.8)
    stop.set()
    for c in clients:
        c.join(timeout=30)
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    assert {v for _, v in seen} == {first, second}
    assert seen[-1][1] == first


def test_a_version_that_fails_its_checksum_is_refused_and_the_old_one_serves(server) -> None:
    url, uri = server
    from continual_trainer import open_store

    first = Store.open(uri).current()
    bad = open_store(uri).update("finetune_new", epochs=2, promote="never").version
    member = next((Path(uri) / "models" / bad).glob("member-*.keras"))
    member.write_bytes(member.read_bytes()[:-10] + b"0123456789")  # damaged after it was committed
    Store.open(uri).promote(bad, first, by="test")
    time.sleep(1.0)
    with urllib.request.urlopen(f"{url}/version") as r:
        state = json.loads(r.read())
    assert state["version"] == first and bad in state["refused"]
    status, answer, _ = _post(f"{url}/predict", _rows(2))
    assert status == 200 and answer["version"] == first


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
    assert f'ctrain_requests_total{{version="{version}",status="200"}} 2' in text
    assert f'ctrain_rows_total{{version="{version}"}} 80' in text
    assert "ctrain_request_seconds_count 3" in text and "ctrain_reloads_total 1" in text
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
