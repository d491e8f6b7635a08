"""The command line is the error boundary: what a user types gets one clear line, never a traceback."""

import sqlite3
import subprocess
import sys

from equiprune.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("equiprune: error:")]
    return line


def test_run_into_an_existing_file_says_out_must_be_a_directory(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me\n")
    assert main(["run", "equiprune-best", "--out", str(target)]) == 2
    assert "--out" in (line := _error_line(capsys)) and str(target) in line and "is a file" in line
    assert target.read_text() == "keep me\n"


def test_sweep_into_an_existing_file_says_out_must_be_a_directory(tmp_path, capsys):
    target = tmp_path / "notes"
    target.write_text("keep me\n")
    assert main(["sweep", "mnist_mlp_neurons", "--out", str(target)]) == 2
    assert "--out" in (line := _error_line(capsys)) and "is a file" in line
    assert target.read_text() == "keep me\n"


def test_report_of_a_directory_whose_store_is_not_a_database_leaves_the_file_alone(tmp_path, capsys):
    (tmp_path / "results.sqlite").write_text("not a database\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an equiprune results store" in _error_line(capsys)
    assert (tmp_path / "results.sqlite").read_text() == "not a database\n"


def test_a_store_that_is_a_database_of_another_kind_is_refused_by_name(tmp_path, capsys):
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # a database, but its `runs` is another table
        db.execute("CREATE TABLE runs (x INTEGER)")
    assert main(["report", str(tmp_path)]) == 2
    assert "is not an equiprune results store" in _error_line(capsys)


def test_importing_every_module_changes_nothing_global():
    """No logging handler, no matplotlib backend switch, no pyplot: the caller's process stays its own."""
    code = """
import importlib, logging, pkgutil, sys
import matplotlib
backend = lambda: dict.__getitem__(matplotlib.rcParams, "backend")  # raw: get_backend() imports pyplot
before = backend()
import equiprune
for info in pkgutil.walk_packages(equiprune.__path__, "equiprune."):
    importlib.import_module(info.name)
assert logging.getLogger("equiprune").handlers == [] and logging.getLogger().handlers == []
assert backend() == before, (before, backend())
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
