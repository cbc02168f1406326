"""The object-store run lock against a real S3 protocol server (moto's server mode on 127.0.0.1, started here):
conditional create, a lease renewed by a heartbeat, expired leases taken over, a run that lost its lock stops.

Runs "race" by interleaving their calls deterministically (patched storage calls, barriers); no Ray."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pytest
from test_engine import write_pipeline

import humove.engine
from humove.config import load_pipeline
from humove.engine import Runner
from humove.ledger import Ledger
from humove.lock import RunLock, RunLockedError, RunLockLostError, _S3Objects
from humove.storage import Storage

BUCKET = "humove-lock-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 and the environment that points s3fs at it; yields a bucket's URL."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start (exit code {server.poll()})") from None
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            env.setenv("AWS_ACCESS_KEY_ID", "test-key")
            env.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
            env.setenv("AWS_DEFAULT_REGION", "us-east-1")
            Storage(f"s3://{BUCKET}").fs.mkdir(BUCKET)
            yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def run_dir(s3):
    return f"{s3}/run-{uuid.uuid4().hex[:8]}"


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def holder_token(run_dir: str) -> str | None:
    storage = Storage(run_dir)
    url = storage.join(".lock")
    return json.loads(storage.read_text(url))["token"] if storage.exists(url) else None


def abandon(lock: RunLock) -> None:
    """A run that died holding its lock: its heartbeat stops, it never releases."""
    lock._stop.set()
    lock._heartbeat.join()


def test_moto_honours_conditional_writes(s3):
    """What the lock relies on: the installed moto refuses a second create and a write with a stale ETag."""
    objects = _S3Objects(Storage(s3), f"{s3}/conditions-{uuid.uuid4().hex[:8]}")
    first = objects.create(b"a")
    assert first is not None and objects.create(b"b") is None
    second = objects.replace(b"c", first)
    assert second is not None and objects.replace(b"d", first) is None
    assert objects.read() == (b"c", second)
    assert objects.delete(first) is False and objects.delete(second) is True and objects.read() is None


def test_a_run_that_saw_no_lock_cannot_take_one_created_since(run_dir, monkeypatch):
    """The race of the audit: B looked (no lock yet), A then took the lock, B goes on. B must be refused, and
    A's lock must stay A's (the old check-write-sleep-read lock let B overwrite it, and both ran)."""
    with RunLock(run_dir) as first:
        monkeypatch.setattr(Storage, "exists", lambda self, url: False)  # B's look happened before A's write
        second = RunLock(run_dir)
        with pytest.raises(RunLockedError, match="lease runs until"):
            second.__enter__()
        monkeypatch.undo()
        assert holder_token(run_dir) == first.token
        first.check()  # A still holds it
    assert holder_token(run_dir) is None


def test_of_runs_creating_the_lock_at_the_same_moment_exactly_one_wins(run_dir, monkeypatch):
    runs = 4
    barrier = threading.Barrier(runs)
    create = _S3Objects.create

    def create_together(self, data):
        barrier.wait(timeout=30)  # every run's create goes to the server at once
        return create(self, data)

    monkeypatch.setattr(_S3Objects, "create", create_together)
    outcomes: list = [None] * runs

    def contend(index: int) -> None:
        lock = RunLock(run_dir)
        try:
            outcomes[index] = lock.__enter__()
        except RunLockedError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, RunLock)]
    assert len(winners) == 1 and sum(isinstance(o, RunLockedError) for o in outcomes) == runs - 1
    assert holder_token(run_dir) == winners[0].token
    winners[0].__exit__(None, None, None)


def test_a_lease_of_absurd_length_is_named_and_held(run_dir):
    storage = Storage(run_dir)
    storage.write_text(storage.join(".lock"), json.dumps({"pid": 7, "host": "h", "token": "x", "expires": 1e300}))
    with pytest.raises(RunLockedError, match="lease runs until 1.*s after 1970"):
        RunLock(run_dir).__enter__()


def test_an_expired_lease_is_taken_over_without_break_lock(run_dir):
    clock = Clock()
    dead = RunLock(run_dir, clock=clock).__enter__()
    abandon(dead)
    with pytest.raises(RunLockedError, match="taken over after then, or at once with --break-lock"):
        RunLock(run_dir, clock=Clock(clock.now + 60)).__enter__()  # still within the 120 s lease
    with RunLock(run_dir, clock=Clock(clock.now + 121)) as successor:
        assert successor.took_over["token"] == dead.token
        assert holder_token(run_dir) == successor.token
    assert holder_token(run_dir) is None


def test_of_two_runs_taking_over_an_expired_lease_one_wins(run_dir, monkeypatch):
    clock = Clock()
    abandon(RunLock(run_dir, clock=clock).__enter__())
    barrier = threading.Barrier(2)
    replace = _S3Objects.replace

    def replace_together(self, data, version):
        barrier.wait(timeout=30)  # both read the expired lease before either replaces it
        return replace(self, data, version)

    monkeypatch.setattr(_S3Objects, "replace", replace_together)
    outcomes: list = [None, None]

    def take(index: int) -> None:
        try:
            outcomes[index] = RunLock(run_dir, clock=Clock(clock.now + 200)).__enter__()
        except RunLockedError as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, RunLock)]
    assert len(winners) == 1 and isinstance(next(o for o in outcomes if o is not winners[0]), RunLockedError)
    monkeypatch.undo()
    assert holder_token(run_dir) == winners[0].token
    winners[0].__exit__(None, None, None)


def test_a_run_whose_lease_was_taken_stops_writing(run_dir):
    clock = Clock()
    slow = RunLock(run_dir, clock=clock).__enter__()  # alive, but its renewals did not get through
    ledger = Ledger(run_dir)
    ledger.storage.guard = slow.check
    table = pa.table({"input_id": ["a"], "id": ["a"]})
    with RunLock(run_dir, clock=Clock(clock.now + 121)) as successor:
        slow.renew()  # its heartbeat's next beat: the lock has another version now
        with pytest.raises(RunLockLostError, match="lost its lock.*it is now held by pid"):
            ledger.append("stage", table)
        assert ledger.parts("stage") == []
        slow.__exit__(None, None, None)
        assert holder_token(run_dir) == successor.token, "the old holder must not release the new holder's lock"


def test_a_run_that_cannot_renew_stops_before_its_lease_runs_out(run_dir):
    clock = Clock()
    with RunLock(run_dir, clock=clock) as lock:
        lock.check()
        clock.now += 91  # no renewal for three quarters of the lease: another run may take it over soon
        with pytest.raises(RunLockLostError, match="could not renew"):
            lock.check()
        lock.renew()
        lock.check()


def test_the_heartbeat_renews_the_lease(run_dir):
    with RunLock(run_dir, lease_s=1.0) as lock:
        first, first_expiry = lock._version, lock.expires
        deadline = time.monotonic() + 20
        while lock._version == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock._version != first and lock.expires > first_expiry
        stored = json.loads(Storage(run_dir).read_text(Storage(run_dir).join(".lock")))
        assert stored["token"] == lock.token and stored["lease_s"] == 1.0


def test_break_lock_takes_a_live_lease(run_dir):
    with RunLock(run_dir) as first:
        with RunLock(run_dir, break_lock=True) as second:
            assert second.took_over["token"] == first.token
            first.renew()
            with pytest.raises(RunLockLostError):
                first.check()
            first.__exit__(None, None, None)
            assert holder_token(run_dir) == second.token
    assert holder_token(run_dir) is None


@pytest.mark.parametrize(("content", "named"), [
    (json.dumps({"pid": 1, "host": "old", "since": "then", "token": "x"}), "pid 1 on old"),  # an older humove's
    ('{"token": "x", "expires": "soon"}', "pid None"),
    ("[1, 2]", "an unreadable lock object"),
    ("\x00garbage", "an unreadable lock object"),
])
def test_a_lock_without_a_lease_needs_break_lock(run_dir, content, named):
    storage = Storage(run_dir)
    storage.write_text(storage.join(".lock"), content)
    with pytest.raises(RunLockedError, match=f"locked by {named}.*without a lease.*--break-lock"):
        RunLock(run_dir).__enter__()
    with RunLock(run_dir, break_lock=True) as lock:
        assert holder_token(run_dir) == lock.token


def test_the_engine_stops_a_run_whose_lock_was_taken(run_dir, tmp_path, monkeypatch):
    """A run on S3 (local executor) whose lock another run breaks before its first batch of records: it ends with
    RunLockLostError and writes no record."""
    monkeypatch.setenv("TOY_CALLS_DIR", str(tmp_path))
    locks: list[RunLock] = []

    def remembered(*args, **kwargs):
        locks.append(RunLock(*args, **kwargs))
        return locks[-1]

    monkeypatch.setattr(humove.engine, "RunLock", remembered)
    append = Ledger.append

    def taken_first(self, stage, table):
        if len(locks) == 1:
            locks.append(RunLock(run_dir, break_lock=True).__enter__())
            locks[0].renew()
        return append(self, stage, table)

    monkeypatch.setattr(Ledger, "append", taken_first)
    config, stages = load_pipeline(write_pipeline(tmp_path, source={"count": 3}))
    with pytest.raises(RunLockLostError):
        Runner(config, stages, run_dir).run()
    assert Ledger(run_dir).parts("toy_source") == []
    assert holder_token(run_dir) == locks[1].token
    locks[1].__exit__(None, None, None)
