"""The learning loop: it lowers the quantized loss, keeps rotations orthogonal, resumes exactly."""

from __future__ import annotations

import pytest
import torch

from rotaquant.errors import ConfigError
from rotaquant.jobs.files import CheckpointFile
from rotaquant.learn.config import AUTO_ITERATIONS, AUTO_LR, OptimizeConfig
from rotaquant.learn.train import _loss, batch_indices, learn, lr_factor
from rotaquant.learn.trainable import make_trainable
from rotaquant.rotation.matrices import RotationStore
from rotaquant.rotation.rotate import resolve_spec
from tests.conftest import tiny_model
from tests.learn.conftest import phrase_windows

BITS = dict(w_bits=16, a_bits=3, k_bits=3, v_bits=3)


def _setup(cfg: OptimizeConfig, family="llama"):
    model = tiny_model(family)
    spec = resolve_spec(model, "auto")
    return make_trainable(model, spec, RotationStore(spec, model.config, seed=cfg.seed, mode=cfg.init_mode), cfg)


_windows = phrase_windows


def _cfg(**kw):
    base = dict(BITS, nsamples=16, seqlen=32, iterations=12, batch_size=4, lr=1.0, device="cpu",
                checkpoint_every=3)
    base.update(kw)
    return OptimizeConfig(**base)


pytestmark = pytest.mark.usefixtures("two_threads")


def test_a_few_steps_reduce_the_quantized_loss(trained_state):
    """Over three initial rotations (seeds) the quantized loss falls on average: one seed's few
    steps on a rugged 3-bit surface can stall (measured ratios after/before 0.749, 0.798, 1.040;
    the same with 1, 2 and 4 threads), their mean may not."""
    state, windows = trained_state
    ratios = []
    for seed in (0, 1, 2):
        cfg = _cfg(iterations=15, lr_schedule="constant", a_bits=3, k_bits=3, v_bits=3, seed=seed)
        model = tiny_model("llama")
        model.load_state_dict(state)
        spec = resolve_spec(model, "auto")
        tm = make_trainable(model, spec, RotationStore(spec, model.config, seed=seed), cfg)
        with torch.no_grad():
            before = _loss(tm.model, windows, None).item()
        res = learn(tm, windows, cfg, progress=False)
        with torch.no_grad():
            after = _loss(tm.model, windows, None).item()
        ratios.append(after / before)
        assert res.orthogonality_error < 1e-10
        assert len(res.losses) == 15 and res.steps_run == 15
    assert sum(ratios) / len(ratios) < 0.9, ratios  # measured mean 0.862


def test_resume_equals_uninterrupted(tmp_path):
    cfg = _cfg(momentum=0.9)
    windows = _windows()
    full = learn(_setup(cfg), windows, cfg, checkpoint=CheckpointFile(tmp_path / "a.ckpt"), progress=False)

    class Crash(Exception):
        pass

    def crash_after_7(step, loss):
        if step == 7:
            raise Crash

    ckpt = CheckpointFile(tmp_path / "b.ckpt")
    with pytest.raises(Crash):
        learn(_setup(cfg), windows, cfg, checkpoint=ckpt, callback=crash_after_7, progress=False)
    resumed = learn(_setup(cfg), windows, cfg, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.resumed_from == 6  # the last checkpoint before the crash
    assert resumed.steps_run == 6
    assert resumed.losses == full.losses
    for key, mat in full.matrices.items():
        assert torch.equal(mat, resumed.matrices[key]), key


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    cfg = _cfg(iterations=3)
    learn(_setup(cfg), _windows(), cfg, checkpoint=CheckpointFile(tmp_path / "c.ckpt"), progress=False)
    other = _cfg(iterations=3, lr=0.5)
    with pytest.raises(ConfigError, match="lr"):
        learn(_setup(other), _windows(), other, checkpoint=CheckpointFile(tmp_path / "c.ckpt"), resume=True, progress=False)


def test_micro_batches_accumulate_to_the_full_batch():
    cfg = _cfg(iterations=3)
    a = learn(_setup(cfg), _windows(), cfg, progress=False)
    cfg_m = _cfg(iterations=3, micro_batch_size=1)
    b = learn(_setup(cfg_m), _windows(), cfg_m, progress=False)
    for key in a.matrices:
        assert torch.allclose(a.matrices[key], b.matrices[key], atol=1e-5), key


def test_data_order_is_a_function_of_seed_and_step():
    first = [batch_indices(s, 10, 4, seed=3).tolist() for s in range(5)]
    assert first == [batch_indices(s, 10, 4, seed=3).tolist() for s in range(5)]
    flat = sum(first, [])
    assert sorted(flat[:10]) == list(range(10))  # one epoch covers every window once
    assert first != [batch_indices(s, 10, 4, seed=4).tolist() for s in range(5)]


def test_schedules():
    assert lr_factor(0, 10, "cosine") == 1.0 and lr_factor(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(5, 10, "linear") == 0.5 and lr_factor(9, 10, "constant") == 1.0


def test_config_refuses_test_split_and_nothing_quantized():
    with pytest.raises(ConfigError, match="test split"):
        OptimizeConfig.load(a_bits=4, split="test")
    with pytest.raises(ConfigError, match="nothing is quantized"):
        OptimizeConfig.load(preset="none")
    with pytest.raises(ConfigError, match="nothing is quantized"):  # bits given: the preset adds none
        OptimizeConfig.load(a_bits=16, k_bits=16, v_bits=16)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        OptimizeConfig.load(a_bits=4, batch_size=8, micro_batch_size=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_learning_on_cuda_with_bf16_autocast():
    cfg = _cfg(iterations=3, device="cuda", autocast="bf16")
    tm = _setup(cfg)
    tm.model.cuda()
    tm.rotations.cuda()
    res = learn(tm, _windows(), cfg, progress=False)
    assert res.peak_memory_gib is not None and res.orthogonality_error < 1e-10
    assert all(torch.isfinite(torch.tensor(res.losses)))


def test_auto_preset_learns_with_what_ptq_deploys():
    """The default learns W16A4KV4 with the default PTQ recipe's activation/KV quantizers (the
    rotation fits the deployed quantizers); explicit keys win, preset none keeps plain defaults."""
    from rotaquant.quant.recipe import PTQRecipe

    cfg = OptimizeConfig.load()
    deployed = PTQRecipe(w_bits=4, a_bits=4, k_bits=4, v_bits=4)
    assert cfg.bits_label() == "W16A4KV4"
    assert (cfg.act_spec, cfg.key_spec, cfg.value_spec) == (deployed.act_spec, deployed.key_spec, deployed.value_spec)
    assert cfg.o_proj_input == deployed.o_proj_input == "per_head"
    mine = OptimizeConfig.load(w_bits=4, a_bits=4, k_bits=4, v_bits=4, a_clip_ratio=1.0, a_asym=False)
    assert mine.bits_label() == "W4A4KV4" and mine.a_clip_ratio == 1.0 and not mine.a_asym and mine.k_asym
    plain = OptimizeConfig.load(preset="none", a_bits=4)
    assert plain.bits_label() == "W16A4" and not plain.a_asym and plain.a_clip_ratio == 1.0
    # the preset's learning rate is for the Cayley SGD; an explicit lr (even None from the CLI) or Adam keeps theirs
    assert cfg.lr == AUTO_LR == 6.0 and mine.lr == AUTO_LR and plain.lr == 1.5
    assert OptimizeConfig.load(lr=2.0).lr == 2.0 and OptimizeConfig.load(lr=None).lr == AUTO_LR
    assert OptimizeConfig.load(optimizer="adam").lr == 1.5
    # so are its steps: 200 for the auto preset's Cayley SGD, 100 otherwise or as asked
    assert cfg.iterations == AUTO_ITERATIONS == 200 and plain.iterations == 100
    assert OptimizeConfig.load(iterations=7).iterations == 7 and OptimizeConfig.load(optimizer="adam").iterations == 100
