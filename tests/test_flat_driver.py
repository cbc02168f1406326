"""The driver holds no stage's work whole: the work reaches the executor as Parquet files read a batch at a time
(`items.WorkFile`), and the stage's inputs are found in the ledger's duckdb index, not in Arrow tables."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_engine import run, write_pipeline

from humove import items
from humove.executors import LocalExecutor
from humove.ledger import Ledger


def test_a_stage_gets_its_work_as_parquet_files_in_row_groups_of_its_batch_size(tmp_path, monkeypatch):
    seen = []
    original = LocalExecutor.map

    def recording_map(self, stage_ref, config, run_dir, work, resources, prepare_resources=None):
        files = [url for url, _ in work.chunks]
        seen.append({"rows": work.num_rows, "batch": resources.batch_size, "files": files,
                     "groups": [[pq.ParquetFile(url).metadata.row_group(i).num_rows
                                 for i in range(pq.ParquetFile(url).num_row_groups)] for url in files]})
        yield from original(self, stage_ref, config, run_dir, work, resources, prepare_resources)

    monkeypatch.setattr(LocalExecutor, "map", recording_map)
    monkeypatch.setattr(items, "CHUNK_GROUPS", 2)  # two batches per file: several files
    run_dir = tmp_path / "run"
    # A file a killed run left: removed at the start of the next run, never read as records.
    stale = run_dir / "toy_square" / "work.tmp-0123456789ab-000000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a killed run")
    run(write_pipeline(tmp_path, source={"count": 7}, with_sum=False), run_dir)

    source, square = seen
    assert (source["rows"], source["batch"], source["groups"]) == (7, 3, [[3, 3], [1]])
    assert (square["rows"], square["batch"], square["groups"]) == (7, 2, [[2, 2], [2, 1]])
    assert all(Path(url).parent == run_dir / "toy_square" and ".tmp-" in Path(url).name for url in square["files"])
    # The work files are gone once the stage is done, and so is the stale one.
    assert not any(".tmp-" in path.name for path in run_dir.rglob("*"))
    assert Ledger(str(run_dir)).summary()[1].ok == 14  # two clips per number


@pytest.mark.parametrize("small_keys", [0, 65_536])
def test_current_records_are_chosen_alike_in_the_index_and_in_memory(tmp_path, monkeypatch, small_keys):
    """A stage above `SMALL_KEYS` stored rows has its current rows chosen by duckdb, a smaller one in Arrow: both
    keep each input's latest attempt and mark a later input's `ok` record of an id an earlier input holds."""
    from toy_stages import ToySource

    from humove import ledger as ledger_module
    from humove.stage import StageContext
    from humove.worker import finalize, records_to_table

    class TwinSource(ToySource):  # inputs "a" and "c" make the same id
        def process(self, item):
            return self.ok("same" if item["input_id"] in "ac" else item["input_id"], number=1)

    monkeypatch.setattr(ledger_module, "SMALL_KEYS", small_keys)
    stage = TwinSource(TwinSource.Config(), StageContext(str(tmp_path), "toy_source"))
    ledger = Ledger(str(tmp_path))
    failed = RuntimeError("flaky")
    for input_id, attempt, outcome in [("c", 1, None), ("b", 1, failed), ("a", 1, None), ("b", 2, None),
                                       ("d", 1, None), ("d", 2, failed)]:
        result = outcome if outcome is not None else stage.process({"input_id": input_id})
        ledger.append("toy_source", records_to_table(stage, finalize(stage, {"input_id": input_id}, result,
                                                                     attempt=attempt)))
    records = ledger.records("toy_source", schema=stage.schema).to_pylist()
    assert [(r["input_id"], r["attempt"], r["status"], r["reason"]) for r in records] == [
        ("a", 1, "ok", None), ("b", 2, "ok", None), ("c", 1, "rejected", "duplicate"), ("d", 2, "error", None)]
    # Among the inputs asked for only: without "a", "c" holds its id alone.
    chosen = ledger.records("toy_source", schema=stage.schema, inputs=pa.array(["c", "d"])).to_pylist()
    assert [(r["input_id"], r["status"]) for r in chosen] == [("c", "ok"), ("d", "error")]


def test_ray_read_tasks_take_runs_of_batches_in_order(tmp_path, monkeypatch):
    """On Ray, a large work is read by tasks, each a run of up to `unit` batches of one work file: together they
    give every item once, in order, as the envelopes the driver would hand over (no Ray needed to check it)."""
    from humove.executors import _read_envelopes
    from humove.storage import Storage

    monkeypatch.setattr(items, "CHUNK_GROUPS", 3)
    rows = pa.concat_tables(items.listing_chunks({"input_id": f"i{n}", "number": n} for n in range(11)))
    rows = rows.append_column(items.ATTEMPT, pa.array([1] * 11, pa.int32()))
    work = items.WorkFile.write(Storage(str(tmp_path)), str(tmp_path / "stage"), rows.schema, [rows], batch_size=2)
    units = list(work.read_units(2))
    assert [(Path(url).name[-14:], first, count) for url, first, count in units] == [
        ("000000.parquet", 0, 2), ("000000.parquet", 2, 1), ("000001.parquet", 0, 2), ("000001.parquet", 2, 1)]
    read = [_read_envelopes(pa.table({"url": [url], "first": [first], "count": [count]}), str(tmp_path), 1)
            for url, first, count in units]
    assert pa.concat_tables(read).equals(items.envelope_rows(rows, 1))


def test_a_stage_whose_pieces_are_left_unread_still_gives_the_next_stage_its_inputs(tmp_path):
    """`Ledger.stage_passes`: a caller may skip a stage's records (the engine does, for stages it does not join);
    the next stage's inputs are still that stage's `ok` ids."""
    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 7}, with_sum=False), run_dir)
    ledger = Ledger(str(run_dir))
    passes = ledger.stage_passes(lambda schema: [])
    source, _, _, _ = next(passes)  # its pieces left unread
    square, _, inputs, pieces = next(passes)
    assert (source, square) == ("toy_source", "toy_square")
    assert sorted(inputs.to_pylist()) == sorted(ledger.records("toy_source")["id"].to_pylist())
    assert sum(piece.num_rows for piece in pieces) == ledger.records("toy_square").num_rows == 14
    passes.close()
