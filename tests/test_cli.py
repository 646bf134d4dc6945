"""CLI errors: one line naming cause and fix, exit status 2, no traceback, nothing overwritten."""

import subprocess
import sys

import pytest

from ssl_transfer.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def smoke(repo_root):
    return str(repo_root / "configs" / "smoke.yaml")


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert "Traceback" not in err


def test_missing_config(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "o").exists()


def test_unparsable_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("transfer:\n  sigma: [1\n")
    code, _, err = run_cli(capsys, "run", str(bad), "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "does not parse")


def test_unknown_key_suggests(capsys, smoke, tmp_path):
    code, _, err = run_cli(capsys, "run", smoke, "--set", "transfer.loss_argz.sigma=3", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "did you mean 'transfer.loss_args'")
    code, _, err = run_cli(capsys, "run", smoke, "--set", "transfer.sigma=3", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "'transfer.sigma' is now 'transfer.loss_args.sigma'")


@pytest.mark.parametrize("override,needle", [
    ("transfer.loss_args.sigma=0", "sigma must be > 0"),
    ("transfer.loss_args.sigma=abc", "wrong type"),
    ("data.views=1", "data.views >= 2"),
])
def test_bad_values(capsys, smoke, tmp_path, override, needle):
    code, _, err = run_cli(capsys, "run", smoke, "--set", override, "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


def test_missing_dataset(capsys, smoke, tmp_path, monkeypatch):
    monkeypatch.setattr("ssl_transfer.data.sources.DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "run", smoke, "--set", f"data.root={tmp_path / 'empty'}",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "apt-get install dataset-fashion-mnist")
    assert not (tmp_path / "o").exists()


def test_an_explicit_data_root_must_exist(capsys, smoke, tmp_path):
    """No silent fall-back to the system copy when the folder the user named is missing."""
    code, _, err = run_cli(capsys, "run", smoke, "--set", f"data.root={tmp_path / 'nothing'}",
                           "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "data.root = '" + str(tmp_path / "nothing") + "' does not exist")
    assert not (tmp_path / "o").exists()


def test_existing_out_dir_is_not_touched(capsys, smoke, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.json").write_text("precious")
    code, _, err = run_cli(capsys, "run", smoke, "--out", str(out))
    assert_one_line_error(code, err, "--overwrite")
    assert (out / "results.json").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_overwrite_refuses_a_directory_holding_files_no_run_writes(capsys, smoke, tmp_path):
    out = tmp_path / "o"
    (out / "logs").mkdir(parents=True)
    (out / "results.json").write_text("old run")
    (out / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, "run", smoke, "--out", str(out), "--overwrite")
    assert_one_line_error(code, err, "files that no ssl-transfer run wrote (thesis.tex)")
    assert sorted(p.name for p in out.iterdir()) == ["logs", "results.json", "thesis.tex"]
    assert (out / "thesis.tex").read_text() == "precious"


def test_overwrite_never_deletes_the_teacher_it_transfers_from(capsys, smoke, tmp_path):
    """`run CFG` then `transfer CFG --teacher runs/CFG/teacher.pt --overwrite` (both default to
    runs/CFG) would delete the teacher before the run saves anything."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "teacher.pt").write_bytes(b"weights")
    (out / "results.json").write_text("{}")
    code, _, err = run_cli(capsys, "transfer", smoke, "--teacher", str(out / "teacher.pt"), "--out", str(out),
                           "--overwrite")
    assert_one_line_error(code, err, "lies inside --out")
    assert (out / "teacher.pt").read_bytes() == b"weights"


def test_out_is_a_file(capsys, smoke, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli(capsys, "run", smoke, "--out", str(f), "--overwrite")
    assert_one_line_error(code, err, "is a file")
    assert f.read_text() == "x"


def test_subprocess_exit_status_and_debug_traceback(tmp_path):
    cmd = [sys.executable, "-m", "ssl_transfer", "run", str(tmp_path / "nope.yaml")]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "does not exist" in p.stderr
    p = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr and "ConfigError" in p.stderr


def test_bad_config_and_out_are_reported_before_lightning_is_imported(tmp_path, smoke):
    """The config and --out are checked first: a typo costs a second at most (torch, to check loss
    options against the loss's constructor), not the seconds lightning and the data take."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("x")
    for args, needle in [([str(tmp_path / "nope.yaml")], "does not exist"),
                         ([smoke, "--set", "seed=-1"], "seed = -1"),
                         ([smoke, "--set", "eval.knn_temperature=.nan"], "knn_temperature"),
                         ([smoke, "--out", str(tmp_path / "run")], "already exists")]:
        code = ("import sys; from ssl_transfer.cli import main; rc = main(['run', *sys.argv[1:]]); "
                "print(rc, 'lightning' in sys.modules)")
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
        assert p.stdout.split() == ["2", "False"] and needle in p.stderr, (args, p.stdout, p.stderr[-2000:])


def test_set_before_the_config_file_is_accepted(capsys, smoke, tmp_path):
    """argparse takes a config written after --set for one more override: it is recognised."""
    code, _, err = run_cli(capsys, "run", "--set", "transfer.loss_args.sigma=0", smoke, "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "sigma must be > 0")  # the config was read, the override applied
    code, _, err = run_cli(capsys, "run", "--set", "transfer.loss_args.sigma=2", "--out", str(tmp_path / "o"))
    assert_one_line_error(code, err, "no config file given")


def test_eval_out_that_cannot_be_written_is_refused_before_evaluating(capsys, smoke, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "none.pt"), "--config", smoke,
                           "--out", str(tmp_path / "file" / "eval.json"))
    assert_one_line_error(code, err, "is not a writable folder")


def test_an_internal_error_is_short_and_points_to_debug(capsys, smoke, tmp_path, monkeypatch):
    def broken(*a, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("ssl_transfer.pipeline.prepare", broken)
    code, _, err = run_cli(capsys, "run", smoke, "--out", str(tmp_path / "o"))
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "internal error: ZeroDivisionError: a bug" in err and "--debug" in err
