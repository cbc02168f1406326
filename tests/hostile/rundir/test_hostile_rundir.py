"""Hostile run dirs (the folders beside this file, each a `run.json` that humove did not write): `humove status`
and `humove report` end with one line naming the file and what is wrong, read nothing outside the run dir and
write nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_hardening_cli import humove

CASES = sorted(p.name for p in Path(__file__).parent.iterdir() if (p / "run.json").is_file())
WHAT_IS_WRONG = {
    "stages-null": "'stages' is null, not a list of stages",
    "stages-not-a-list": "'stages' is \"ingest\", not a list of stages",
    "stage-without-name": "stage 1's name is null, not a stage name",
    "stage-name-leaves-the-run-dir": "stage 1's name is \"../../../../etc\", not a stage name",
    "stage-without-class": "stage 'ingest' names no class",
    "stage-named-twice": "a stage is named twice",
    "max-attempts-text": "'max_attempts' is \"3\", not a positive whole number",
    "not-json": "is not valid JSON",
    "not-an-object": "the file holds a JSON list, not an object",
    "not-utf8": "is not valid JSON",
}


def test_every_case_is_named():
    assert set(CASES) == set(WHAT_IS_WRONG)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", ["status", "report"])
def test_a_hostile_run_json_is_one_line_naming_the_file(tmp_path, case, command):
    run_dir = tmp_path / case
    shutil.copytree(Path(__file__).parent / case, run_dir)
    result = humove(command, run_dir)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    line = result.output.replace("\n", "")  # the console wraps long lines
    assert line.startswith(f"error: {run_dir / 'run.json'}") and WHAT_IS_WRONG[case] in line, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["run.json"], "nothing is written"
