import pytest
import torch

from rotaquant.rotation.hadamard import make_rotation
from rotaquant.rotation.matrices import RotationFileError, RotationStore, read_rotation_file
from rotaquant.rotation.rotate import rotate
from rotaquant.rotation.spec import load_spec
from tests.conftest import tiny_config, tiny_model


def test_store_groups_and_reproducibility():
    spec = load_spec("llama")
    a, b = RotationStore(spec, tiny_config(), seed=5), RotationStore(spec, tiny_config(), seed=5)
    r2_l0 = a.get("r2", "model.layers.0.self_attn.v_proj")
    assert torch.equal(r2_l0, a.get("r2", "model.layers.0.self_attn.o_proj"))
    assert not torch.equal(r2_l0, a.get("r2", "model.layers.1.self_attn.v_proj"))
    # order of requests does not matter
    b.get("r2", "model.layers.1.self_attn.v_proj")
    assert torch.equal(b.get("r2", "model.layers.0.self_attn.v_proj"), r2_l0)
    assert a.get("r1").shape == (64, 64) and r2_l0.shape == (16, 16)


def test_spinquant_file_is_loaded(tmp_path):
    r1 = make_rotation(64, "orthogonal", seed=1)
    r2 = {f"model.layers.{i}.self_attn.R2": make_rotation(16, "orthogonal", seed=10 + i) for i in range(2)}
    torch.save({"R1": r1.float(), **{k: v.float() for k, v in r2.items()}}, tmp_path / "R.bin")
    got = read_rotation_file(tmp_path / "R.bin")
    assert set(got) == {("r1", ""), ("r2", "layers.0"), ("r2", "layers.1")}
    model = tiny_model("llama", dtype=torch.float64)
    ids = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        ref = model(ids).logits
    state = rotate(model, rotation_path=tmp_path / "R.bin", progress=False)
    torch.testing.assert_close(state.store.get("r1"), r1, atol=1e-6, rtol=0)
    with torch.no_grad():
        out = model(ids).logits
    # float32 matrices from the file: the function is kept to float32 accuracy
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_wrong_shape_is_refused(tmp_path):
    torch.save({"R1": make_rotation(32, "orthogonal")}, tmp_path / "R.bin")
    with pytest.raises(RotationFileError, match=r"\(32, 32\).*\(64, 64\)"):
        rotate(tiny_model("llama"), rotation_path=tmp_path / "R.bin", progress=False)


def test_non_orthogonal_and_integer_are_refused(tmp_path):
    torch.save({"R1": torch.randn(64, 64)}, tmp_path / "a.bin")
    with pytest.raises(RotationFileError, match="not orthogonal"):
        rotate(tiny_model("llama"), rotation_path=tmp_path / "a.bin", progress=False)
    torch.save({"R1": torch.eye(64, dtype=torch.int64)}, tmp_path / "b.bin")
    with pytest.raises(RotationFileError, match="floating-point"):
        rotate(tiny_model("llama"), rotation_path=tmp_path / "b.bin", progress=False)


def test_unknown_key_and_missing_file(tmp_path):
    torch.save({"R7": torch.eye(4)}, tmp_path / "c.bin")
    with pytest.raises(RotationFileError, match="R7"):
        read_rotation_file(tmp_path / "c.bin")
    with pytest.raises(RotationFileError, match="does not exist"):
        read_rotation_file(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(RotationFileError, match="safetensors"):
        read_rotation_file(tmp_path / "bad.safetensors")
