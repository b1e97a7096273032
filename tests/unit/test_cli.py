"""The CLI's contract for bad input: one clear line, exit 125, nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlaunch.cli.main import main


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for line in ("125", "126", "127", "128+N"):
        assert line in out


def test_a_missing_image_is_one_line_and_125(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["run", f"oci:{tmp_path}/nothing:latest", "--", "true"])
    err = capsys.readouterr().err
    assert status == 125
    assert "Traceback" not in err
    assert err.startswith("vmlaunch: ") and "nothing" in err


def test_a_missing_bind_source_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["run", "--bind", f"{tmp_path}/absent:/data", "oci:x:y", "--", "true"])
    err = capsys.readouterr().err
    assert status == 125
    assert f"--bind source {tmp_path}/absent does not exist" in err


def test_a_malformed_bind_says_the_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--bind", "/tmp", "oci:x:y"]) == 125
    assert "SRC:DST[:ro|rw]" in capsys.readouterr().err


def test_an_unreachable_broker_is_one_line_and_125(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.image.layout import Layout, file, tar

    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("bin/true", mode=0o755))]))
    monkeypatch.setenv("VMLAUNCH_BROKER_SOCKET", str(tmp_path / "no-broker.sock"))
    status = main(["run", f"oci:{tmp_path}/img:latest", "--", "true"])
    err = capsys.readouterr().err
    assert status == 125
    assert f"cannot reach the vmlaunch broker at {tmp_path}/no-broker.sock" in err
    assert "hint: ask the administrator to start vmlaunch-broker" in err
