"""The store's low-level rules, each on its own and fast (`make mutate`, group `store`): locks and
when a holder counts as gone, exclusive creation, atomic writes, claims, and what cleanup may
remove (a dead writer's leftovers, never a live one's, never input data)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import HOST, TMP_PREFIX
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta
from continual_trainer.data.store import core
from continual_trainer.data.store.core import _is_dead, _read_owner, pid_alive, utc_stamp


@pytest.fixture()
def store(bare_store: Store) -> Store:
    return bare_store


def _age_file(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_lock_is_held_until_released_even_when_the_holder_fails(store: Store) -> None:
    lock = Path(store._path("locks/L"))
    with store.lock("L"):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] and holder["time"] <= time.time()
        with pytest.raises(UserError, match=r"lock L is held by another process; try again"), store.lock("L", 0.2):
            pass
    assert not lock.exists()
    with pytest.raises(RuntimeError), store.lock("L"):
        raise RuntimeError("the holder fails")
    assert not lock.exists()


def test_a_second_holder_waits_for_the_first(store: Store) -> None:
    order: list[str] = []
    entered = threading.Event()

    def first() -> None:
        with store.lock("L"):
            entered.set()
            time.sleep(0.3)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(5)
    with store.lock("L", timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first out", "second in"]


def test_when_a_lock_holder_counts_as_gone(store: Store, dead_pid: int, caplog) -> None:
    lock = Path(store._path("locks/L"))
    lock.parent.mkdir(parents=True, exist_ok=True)

    def holder(**fields: object) -> bool:
        lock.write_text(json.dumps(fields))
        return store._holder_is_gone("locks/L", stale_after=300)

    now = time.time()
    assert holder(pid=dead_pid, host=HOST, time=now)  # dead, on this host
    assert not holder(pid=os.getpid(), host=HOST, time=now)  # alive
    assert not holder(pid=os.getpid(), host=HOST, time=now - 299)
    assert holder(pid=os.getpid(), host=HOST, time=now - 301)  # alive but far too old: stale
    assert not holder(pid=dead_pid, host="another-host", time=now - 10)  # elsewhere: trusted until stale
    assert holder(pid=dead_pid, host="another-host", time=now - 400)
    lock.write_text("{half written")
    assert not store._holder_is_gone("locks/L", 300)  # unreadable but new: a writer is at it
    _age_file(lock, 6)
    assert store._holder_is_gone("locks/L", 300)  # unreadable and old
    lock.unlink()
    assert not store._holder_is_gone("locks/L", 300)  # released meanwhile
    lock.write_text(json.dumps({"pid": dead_pid, "host": HOST, "time": now}))
    with caplog.at_level(logging.WARNING), store.lock("L", timeout=1):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "breaking stale lock locks/L" in caplog.text


def test_exclusive_creation_wins_once_and_leaves_no_temporary(store: Store) -> None:
    assert store._create_exclusive("claims/x", b"one")
    assert not store._create_exclusive("claims/x", b"two")
    assert store._read("claims/x") == b"one"
    assert [p.name for p in Path(store._path("claims")).iterdir()] == ["x"]


def test_a_write_replaces_the_file_whole_and_a_failed_one_names_it(store: Store, tmp_path: Path) -> None:
    store._write("a/b/c.json", b"first")
    store._write("a/b/c.json", b"second")
    assert store._read("a/b/c.json") == b"second"
    assert [p.name for p in Path(store._path("a/b")).iterdir()] == ["c.json"]
    Path(store._path("a/b/dir.json")).mkdir()  # a folder where the file goes: the write fails
    with pytest.raises(UserError) as failed:
        store._write("a/b/dir.json", b"x")
    assert str(failed.value).startswith(f"{store.display}: cannot write a/b/dir.json (")
    assert sorted(p.name for p in Path(store._path("a/b")).iterdir()) == ["c.json", "dir.json"]
    with pytest.raises(FileNotFoundError):
        store._read("a/b/missing")
    Path(store._path("a/b/bad.json")).write_text("{")
    with pytest.raises(UserError, match=r"a/b/bad.json is damaged \(not valid JSON"):
        store._read_json("a/b/bad.json")
    assert store._list_files("a/b") == ["bad.json", "c.json"] and store._list_dirs("a/b") == ["dir.json"]
    assert store._list_files("nowhere") == []


def test_a_claim_is_a_folder_made_once_with_its_owner(store: Store) -> None:
    assert store._claim("models/v1", ".writer")
    assert not store._claim("models/v1", ".writer")
    owner = json.loads(Path(store._path("models/v1/.writer")).read_text())
    assert owner == {"host": HOST, "pid": os.getpid()}
    assert _read_owner(store._path("models/v1/.writer")) == (HOST, os.getpid())


def test_an_owner_file_of_any_age_is_read_or_ignored(tmp_path: Path) -> None:
    f = tmp_path / "owner"
    assert _read_owner(str(f)) is None
    f.write_text("1234\n")  # a bare pid: stores before 0.2, this host
    assert _read_owner(str(f)) == (HOST, 1234)
    f.write_text('{"host": "h", "pid": "56"}')
    assert _read_owner(str(f)) == ("h", 56)
    for garbage in ("{", '{"host": "h"}', '["h", 1]', '{"host": "h", "pid": "x"}'):
        f.write_text(garbage)
        assert _read_owner(str(f)) is None, garbage


def test_which_writers_are_dead(dead_pid: int) -> None:
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid) and not pid_alive(0) and not pid_alive(-1)
    assert _is_dead(HOST, dead_pid, 0.0) and not _is_dead(HOST, os.getpid(), 10**6)
    assert not _is_dead("elsewhere", dead_pid, core._GRACE_SECONDS - 1)
    assert _is_dead("elsewhere", os.getpid(), core._GRACE_SECONDS + 1)


def test_a_dead_writers_temporaries_go_and_a_live_ones_stay(store: Store, dead_pid: int) -> None:
    folder = Path(store._path("batches"))
    folder.mkdir(parents=True, exist_ok=True)
    dead = folder / f"{TMP_PREFIX}{HOST}-{dead_pid}-abcd1234"
    live = folder / f"{TMP_PREFIX}{HOST}-{os.getpid()}-abcd1234"
    other = folder / f"{TMP_PREFIX}elsewhere-{dead_pid}-abcd1234"
    for f in (dead, live, other):
        f.write_bytes(b"x")
    store._remove_dead_temporaries(str(folder))
    assert not dead.exists() and live.exists() and other.exists()
    dead.write_bytes(b"x")
    store._remove_dead_temporaries(str(folder))  # once per process and folder
    assert dead.exists()


def test_cleanup_removes_a_dead_writers_folder_and_quarantines_its_input(store: Store, dead_pid: int) -> None:
    models = Path(store._path("models"))

    def folder(kind: str, name: str, owner: int | None, marker: bool = False, data: bool = False) -> Path:
        path = Path(store._path(f"{kind}/{name}"))
        path.mkdir(parents=True)
        if owner is not None:
            (path / ".writer").write_text(json.dumps({"host": HOST, "pid": owner}))
        if marker:
            (path / "manifest.json").write_text("{}")
        if data:
            (path / "data.parquet").write_bytes(b"rows")
        return path

    dead = folder("models", "dead", dead_pid)
    live = folder("models", "live", os.getpid())
    done = folder("models", "done", dead_pid, marker=True)
    young = folder("models", "young", None)
    old = folder("models", "old", None)
    _age_file(old, core._GRACE_SECONDS + 10)
    temps = folder("models", "temps", None)
    (temps / f"{TMP_PREFIX}{HOST}-{dead_pid}-abcd1234").write_bytes(b"x")
    store._remove_uncommitted("models", "manifest.json", ".writer")
    assert sorted(p.name for p in models.iterdir()) == ["done", "live", "young"]
    assert live.exists() and done.exists() and young.exists() and not dead.exists() and not old.exists()
    batch = folder("batches", "000001-x", dead_pid, data=True)
    store._remove_uncommitted("batches", "batch.json", ".writer")
    assert not batch.exists()
    (kept,) = Path(store._path("quarantine")).iterdir()
    assert kept.name.endswith("-uncommitted-000001-x") and (kept / "data.parquet").read_bytes() == b"rows"
    assert "stopped before committing" in (kept / "reason.txt").read_text()


def test_store_json_refusals_name_what_is_wrong() -> None:
    meta = StoreMeta(Schema(("a",), "y", (0, 1)), "mlp:4", 0.25, architecture_sha256="ab")
    back = StoreMeta.from_json(meta.to_json(), "s")
    assert back == meta and back.task == "classification"
    assert "architecture_sha256" not in StoreMeta(Schema(("a",), "y", (0, 1)), "mlp:4").to_json()
    with pytest.raises(UserError, match=r"^s: store.json is damaged \(expected a JSON object\)$"):
        StoreMeta.from_json([1], "s")
    with pytest.raises(UserError, match=r"^s: store.json is damaged \(no format_version\)$"):
        StoreMeta.from_json({**meta.to_json(), "format_version": "1"}, "s")
    with pytest.raises(UserError, match=r"store format version 99 is newer than this ctrain reads"):
        StoreMeta.from_json({**meta.to_json(), "format_version": 99}, "s")
    broken = meta.to_json()
    del broken["model"]
    with pytest.raises(UserError, match=r"^s: store.json is damaged \(KeyError"):
        StoreMeta.from_json(broken, "s")


def test_a_store_knows_what_is_inside_it(store: Store, tmp_path: Path) -> None:
    root = Path(store.uri)
    assert store.contains(str(root)) and store.contains(str(root / "batches" / "x"))
    assert not store.contains(str(tmp_path / "elsewhere")) and not store.contains(str(root) + "-sibling")
    link = tmp_path / "link"
    link.symlink_to(root)
    assert store.contains(str(link / "models"))
    assert not store.contains("mock://x")  # another file system
    assert store._inside("models/x") and not store._inside("../elsewhere")


def test_events_are_read_oldest_first_by_kind_and_unreadable_ones_skipped(store: Store) -> None:
    for kind, version in (("promote", "a"), ("delete", "b"), ("promote", "c")):
        store.record_event(kind, {"version": version})
        time.sleep(0.003)  # events are named by the millisecond: within one, their order is the name's
    Path(store._path("events/zzz-broken.json")).write_text("{")
    Path(store._path("events/zzz-list.json")).write_text("[1]")
    assert [e["version"] for e in store.events("promote")] == ["a", "c"]
    assert [e["kind"] for e in store.events()] == ["promote", "delete", "promote"]
    stamp = utc_stamp()
    assert len(stamp) == len("20261205-231406-757") and stamp[8] == "-" and stamp[15] == "-"
    assert isinstance(store._fs, pafs.LocalFileSystem)


def test_a_holder_that_wrote_no_pid_or_time_counts_as_gone(store: Store) -> None:
    lock = Path(store._path("locks/L"))
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": HOST, "time": time.time()}))
    assert store._holder_is_gone("locks/L", 300)  # no pid: no live process holds it
    lock.write_text(json.dumps({"host": "another-host", "pid": os.getpid()}))
    assert store._holder_is_gone("locks/L", 300)  # no time: as old as can be
    lock.write_text("[unreadable")
    _age_file(lock, 5.5)
    assert store._holder_is_gone("locks/L", 300)


def test_json_files_are_written_sorted_indented_and_with_what_json_cannot_hold_as_text(store: Store) -> None:
    store._write_json("x.json", {"b": 1, "a": Path("/p")})
    assert Path(store._path("x.json")).read_text() == '{\n  "a": "/p",\n  "b": 1\n}\n'
    store.record_event("note", {"path": Path("/q")})
    (event,) = store.events("note")
    assert event["path"] == "/q" and event["kind"] == "note" and event["time"].endswith("+00:00")


def test_time_stamps_are_utc_whatever_the_machines_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no daylight saving
    time.tzset()
    try:
        stamp = utc_stamp()
        utc = time.gmtime()
        assert stamp[9:11] == time.strftime("%H", utc) != time.strftime("%H", time.localtime())
        assert int(stamp.rsplit("-", 1)[1]) < 1000
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_claim_makes_the_folders_above_it(store: Store) -> None:
    assert store._claim("deep/er/folder", ".writer")
    assert Path(store._path("deep/er/folder/.writer")).exists()


def test_missing_paths_have_no_names_and_no_age(tmp_path: Path) -> None:
    assert core._names(str(tmp_path / "missing")) == []
    assert core._age(str(tmp_path / "missing")) == 0.0
    assert pid_alive(1)  # the first process of the machine (or container) is alive


def test_claims_and_containment_on_s3(s3_server) -> None:
    uri = s3_server()
    store = Store.create(uri, StoreMeta(Schema(("a", "b"), "y", (0, 1)), "mlp:4"))
    store.release_init()
    assert store._claim("models/v1", ".writer") and not store._claim("models/v1", ".writer")
    assert json.loads(store._read("models/v1/.writer")) == {"host": HOST, "pid": os.getpid()}
    base, _, query = uri.partition("?")
    assert store.contains(uri) and store.contains(f"{base}/batches/b1?{query}")
    assert store.contains(f"{base}/?{query}")
    assert not store.contains(f"{base}-sibling?{query}") and not store.contains(f"{base}x/y?{query}")
    assert not store.contains(f"s3://another-bucket/store?{query}")
    assert not store.contains("/tmp/local")
