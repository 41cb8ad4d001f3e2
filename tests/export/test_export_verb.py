"""rotaquant.export(model, tokenizer, output): the verb takes its OutputConfig, a dict of its keys or a
folder path plus keywords; all three write the same export."""

import pytest
import torch

import rotaquant
from rotaquant.config import OutputConfig
from rotaquant.errors import ConfigError, OutputError
from rotaquant.export.reload import is_quantized_export, load_quantized
from tests.export.test_compressed import ids_for, quantized

pytest.importorskip("compressed_tensors")


def test_output_config_dict_and_path_write_the_same_export(tmp_path):
    model = quantized("w4a16_g32")
    ids = ids_for(model)
    with torch.no_grad():
        ref = model(ids).logits
    for out, how in [(tmp_path / "cfg", OutputConfig(output=str(tmp_path / "cfg"))),
                     (tmp_path / "dict", {"output": str(tmp_path / "dict")}),
                     (tmp_path / "path", tmp_path / "path")]:
        summary = rotaquant.export(model, None, how)
        assert summary["output"] == str(out) and is_quantized_export(out)
        with torch.no_grad():
            assert torch.equal(load_quantized(out, kernel="reference")[0](ids).logits, ref), how


def test_overwrite_comes_from_the_config_and_a_keyword_overrides_it(tmp_path):
    model = quantized("w4a16_g32")
    out = tmp_path / "q"
    rotaquant.export(model, None, OutputConfig(output=str(out)))
    with pytest.raises(OutputError):
        rotaquant.export(model, None, OutputConfig(output=str(out)))
    rotaquant.export(model, None, OutputConfig(output=str(out), overwrite=True))
    with pytest.raises(OutputError):
        rotaquant.export(model, None, OutputConfig(output=str(out), overwrite=True), overwrite=False)
    rotaquant.export(model, None, str(out), overwrite=True)
    assert is_quantized_export(out)


def test_a_config_without_a_folder_or_with_a_typo_is_a_named_error(tmp_path):
    model = quantized("w4a16_g32")
    with pytest.raises(ConfigError, match="needs a folder"):
        rotaquant.export(model, None, OutputConfig())
    with pytest.raises(ConfigError, match="outptu: unknown key"):
        rotaquant.export(model, None, {"outptu": str(tmp_path / "q")})
    with pytest.raises(ConfigError, match="not int"):
        rotaquant.export(model, None, 3)
    assert list(tmp_path.iterdir()) == []
