"""`tongban console serve`: a configuration that cannot be used ends the command with exit code
1 and one line naming the file or the key (never a trace); a command line without --config is
exit code 2."""

from __future__ import annotations

from pathlib import Path

from cli_support import Run


def test_a_console_configuration_that_cannot_be_used_is_one_line_and_exit_1(
    run: Run, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.toml"
    code, _, err = run("console", "serve", "--config", missing)
    assert code == 1
    assert str(missing) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[console\nlisten = ", encoding="utf-8")
    code, _, err = run("console", "serve", "--config", broken)
    assert (code, "Traceback" in err) == (1, False)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[console]\nlisten = "127.0.0.1:8600"\ncolour = "red"\n', encoding="utf-8")
    code, _, err = run("console", "serve", "--config", unknown)
    assert code == 1
    assert "colour" in err


def test_console_serve_without_a_configuration_is_a_usage_error(run: Run) -> None:
    code, _, err = run("console", "serve")
    assert code == 2
    assert "--config" in err
