"""Loading fails early and by name: bad device/dtype, truncated GGUF, unwritable cache; one conversion."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from rotaquant.errors import ConfigError, ModelLoadError, OutputError
from rotaquant.models import loading
from rotaquant.models.loading import gguf_cache_folder, load_model, resolve_device, resolve_dtype
from tests.models.test_loading import save_tiny_folder


def tiny_gguf(path):
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "tiny")
    writer.add_tensor("a", np.ones((64, 64), dtype=np.float32))
    writer.add_tensor("b", np.ones((64,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("cut,message", [(60, "truncated or corrupt"), (300, "truncated or corrupt"),
                                         (-100, "truncated")])
def test_truncated_gguf_is_a_named_error(tmp_path, cut, message):
    data = tiny_gguf(tmp_path / "full.gguf").read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut])
    with pytest.raises(ModelLoadError, match=message):
        loading.check_gguf_complete(bad)
    loading.check_gguf_complete(tmp_path / "full.gguf")  # the whole file is fine
    with pytest.raises(ModelLoadError, match="truncated"):
        gguf_cache_folder(bad, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").glob("*-v*"))


def test_bad_device_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match="unknown dtype 'bogus'"):
        resolve_dtype("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda")


def test_cuda_on_a_cpu_host_fails_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    converted = []
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: converted.append(a))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ConfigError, match="cuda"):
        load_model(str(gguf), device="cuda", cache_dir=tmp_path / "cache")
    assert converted == []


def test_unwritable_cache_fails_before_conversion(tmp_path, monkeypatch):
    converted = []
    monkeypatch.setattr(loading, "_convert_gguf", lambda *a: converted.append(a))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(OutputError, match="cache"):
        load_model(str(gguf), cache_dir=blocker)
    assert converted == []


def test_concurrent_first_use_converts_once(tmp_path, monkeypatch):
    calls = []

    def slow_convert(path, target):
        calls.append(path)
        time.sleep(0.3)
        with loading.atomic_directory(target, overwrite=True, require_marker=False) as tmp:
            save_tiny_folder(tmp)

    monkeypatch.setattr(loading, "_convert_gguf", slow_convert)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\2" * 64)
    results = []
    threads = [threading.Thread(target=lambda: results.append(gguf_cache_folder(gguf, tmp_path / "c")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and (results[0] / "config.json").is_file()


def test_cache_use_sweeps_stale_temporary_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_convert_gguf", lambda p, target: save_tiny_folder(target))
    root = tmp_path / "c" / "gguf"
    stale = root / ".abc-v1.tmp-xyz"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x")
    old = time.time() - 3 * 3600
    os.utime(stale, (old, old))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\3" * 64)
    gguf_cache_folder(gguf, tmp_path / "c")
    assert not stale.exists()


def test_cached_weights_follow_the_umask(tmp_path, monkeypatch):
    def convert_0600(path, target):
        with loading.atomic_directory(target, overwrite=True, require_marker=False) as tmp:
            save_tiny_folder(tmp)
            os.chmod(tmp / "model.safetensors", 0o600)

    monkeypatch.setattr(loading, "_convert_gguf", convert_0600)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\4" * 64)
    old = os.umask(0o022)
    try:
        folder = gguf_cache_folder(gguf, tmp_path / "c")
    finally:
        os.umask(old)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
