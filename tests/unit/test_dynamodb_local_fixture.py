"""tests/dynamodb_local.py reads scripts/dynamodb's answer: its URL, a skip only when Java
cannot be installed (exit 3), a failure for anything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import dynamodb_local


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "dynamodb"
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return path


def test_the_url_is_the_last_line_the_script_prints(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb_local, "SCRIPT", script(
        tmp_path, "echo http://127.0.0.1:8123; echo 'Starting...' >&2"))
    assert dynamodb_local.start_dynamodb_local() == "http://127.0.0.1:8123"


def test_no_java_and_no_way_to_install_it_skips(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb_local, "SCRIPT", script(tmp_path, "echo 'needs Java' >&2; exit 3"))
    with pytest.raises(pytest.skip.Exception, match="needs Java"):
        dynamodb_local.start_dynamodb_local()


def test_any_other_failure_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb_local, "SCRIPT", script(tmp_path, "echo 'port taken' >&2; exit 1"))
    with pytest.raises(pytest.fail.Exception, match="port taken"):
        dynamodb_local.start_dynamodb_local()
