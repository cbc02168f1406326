"""Hostile pipeline files (the YAML files beside this one): `humove run` ends with one line saying what is wrong,
runs nothing the file names as data, and writes nothing (no run dir is created).

A pipeline file that names a custom stage (`package.module:Class`) imports that module: such a file is code, and
is run only when you trust it (README, Security and reliability)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_hardening_cli import humove

HERE = Path(__file__).parent
CASES = sorted(path.name for path in HERE.glob("*.yaml"))
WHAT_IS_WRONG = {
    "python-tag.yaml": "not valid YAML: could not determine a constructor for the tag "
                       "'tag:yaml.org,2002:python/object/apply:os.system' (line 4, column 12)",
    "not-a-stage.yaml": "subprocess:Popen is not a humove Stage",
    "not-a-mapping.yaml": "a pipeline file is a mapping (name, run, stages), not list",
    "extends-missing.yaml": "extends 'no-such-base.yaml': neither",
    "extends-itself.yaml": "extends 'extends-itself.yaml' makes a cycle",
    "unknown-stage.yaml": "unknown stage 'no_such_stage'",
}


def test_every_case_is_named():
    assert set(CASES) == set(WHAT_IS_WRONG)


@pytest.mark.parametrize("case", CASES)
def test_a_hostile_pipeline_file_is_one_line_and_runs_nothing(tmp_path, monkeypatch, case):
    from humove import cli

    monkeypatch.chdir(tmp_path)  # where the python tag would `touch` its marker
    monkeypatch.setattr(cli.console, "width", 10_000)  # no wrapping: one line is one line
    result = humove("run", HERE / case, "--run-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and WHAT_IS_WRONG[case] in lines[0], result.output
    assert os.listdir(tmp_path) == [], "nothing ran and nothing was written (no marker, no run dir)"
