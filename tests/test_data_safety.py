"""Data files fail by name (non-UTF-8, a folder, no offline train split); no calibration on the test set."""

from __future__ import annotations

import shutil

import pytest

from rotaquant.cli import main
from rotaquant.data import calibration_windows, check_calibration_source, load_text
from rotaquant.errors import DataError
from tests.conftest import ByteTokenizer

TEXT = "rotations spread the outliers of every channel\n" * 40


@pytest.fixture
def data_dir(tmp_path):
    """A WikiText-2 data folder of small files."""
    root = tmp_path / "data"
    (root / "wikitext-2-raw").mkdir(parents=True)
    (root / "wikitext-2").mkdir()
    (root / "wikitext-2-raw" / "wiki.test.raw").write_text("the test set " * 400)
    (root / "wikitext-2" / "valid.txt").write_text("the validation set " * 400)
    return root


# -- item 4: non-UTF-8 data ---------------------------------------------------------------------
def test_non_utf8_file_is_a_data_error(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 na\xefve\n".encode("latin-1") * 20)
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(str(bad))
    out = tmp_path / "r.json"
    assert main(["eval", "-q", "--data", str(bad), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err and not out.exists()


# -- item 10: --data <dir>, no train split offered -------------------------------------------------
def test_a_folder_as_data_says_it_is_a_folder(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_text(str(tmp_path))


def test_train_split_is_not_offered(data_dir):
    with pytest.raises(DataError, match="no split 'train'") as info:
        load_text("wikitext2", "train", data_dir=data_dir)
    assert "'train'" not in info.value.args[0].split("use one of")[1]


# -- item 5: no calibration on the test set unless asked ---------------------------------------------
def test_test_split_is_refused_for_calibration(data_dir):
    tok = ByteTokenizer()
    with pytest.raises(DataError, match="test set"):
        calibration_windows(tok, 2, 16, "wikitext2", "test", data_dir=data_dir)
    assert calibration_windows(tok, 2, 16, "wikitext2", "test", data_dir=data_dir, allow_test=True).shape == (2, 16)
    assert calibration_windows(tok, 2, 16, "wikitext2", "validation", data_dir=data_dir).shape == (2, 16)


def test_the_test_file_by_path_or_copy_is_refused(data_dir, tmp_path):
    test_file = data_dir / "wikitext-2-raw" / "wiki.test.raw"
    copy = tmp_path / "my_calibration.txt"
    shutil.copy(test_file, copy)
    for source in (test_file, copy):
        with pytest.raises(DataError, match="WikiText-2 test set"):
            calibration_windows(ByteTokenizer(), 2, 16, str(source), data_dir=data_dir)
    other = tmp_path / "other.txt"
    other.write_text(TEXT)
    check_calibration_source(str(other), "validation", data_dir)  # other text is fine


def test_ptq_recipe_with_cal_split_test_is_refused_before_loading(tmp_path, data_dir, monkeypatch, capsys):
    import rotaquant.jobs.ptq as job

    monkeypatch.setattr(job, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"w_bits: 4\nw_method: gptq\ncal_split: test\ndata_dir: {data_dir}\n")
    assert main(["ptq", "-q", "--recipe", str(recipe)]) == 2
    assert "test set" in capsys.readouterr().err


def test_optimize_with_the_test_file_as_data_is_refused(tmp_path, data_dir, monkeypatch, capsys):
    import rotaquant.jobs.learn as job

    monkeypatch.setattr(job, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "R.safetensors"
    code = main(["optimize", "-q", "--output", str(out), "--a-bits", "4", "--data-dir", str(data_dir),
                 "--data", str(data_dir / "wikitext-2-raw" / "wiki.test.raw"), "--device", "cpu"])
    assert code == 2 and "test set" in capsys.readouterr().err and not out.exists()
