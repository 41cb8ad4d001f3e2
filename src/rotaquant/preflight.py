"""Checks a job runs before its slow work: settings, data and output paths before the model is
loaded, and model-dependent settings right after loading, before anything is changed.

A run that would fail at its end (an unwritable JSON path, a group size that does not divide a
layer, calibration on the test set) fails here instead, in a second, with a named error.
"""

from __future__ import annotations

import os
from fnmatch import fnmatch

from torch import nn

from .config import check_device_dtype
from .data import check_calibration_source
from .errors import ConfigError
from .io import check_writable_output


def check_ptq(rec, json_path: str | os.PathLike | None = None) -> None:
    """Everything of a PTQ recipe that can be checked without the model (nothing is written).

    Raises:
        ConfigError: unknown dtype, a device this host does not have, a missing rotation file.
        DataError: GPTQ calibration on the WikiText-2 test set without ``allow_test_calibration``.
        OutputError: ``json_path`` cannot be written.
    """
    check_device_dtype(rec.device, rec.dtype)
    if json_path:
        check_writable_output(json_path, "file", overwrite=True)
    if rec.rotate and rec.rotation_path:
        check_rotation_file(rec.rotation_path)
    if rec.w_bits < 16 and rec.w_method == "gptq":
        check_calibration_source(rec.cal_data, rec.cal_split, rec.data_dir,
                                 getattr(rec, "allow_test_calibration", False))


def check_rotation_file(path: str | os.PathLike) -> None:
    """Read a rotation file once before the model is loaded: a missing, unreadable or foreign file
    fails now (:class:`~rotaquant.rotation.matrices.RotationFileError`); whether its matrices fit the
    model is checked when they are loaded."""
    from .rotation.matrices import read_rotation_file

    read_rotation_file(path)


def check_group_sizes_early(model: nn.Module, rec) -> None:
    """Each group size must divide the size it splits: checked right after loading, before the
    model is rotated (rotations keep every linear's input size, so the answer is the same).

    Raises:
        ConfigError: naming the group size, the size it does not divide and the module.
    """
    from .rotation.matrices import config_dim

    skip = tuple(getattr(rec, "skip_modules", ()) or ())
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(fnmatch(name, pat) for pat in skip):
            continue
        for what, bits, group in (("w_groupsize", rec.w_bits, rec.w_groupsize),
                                  ("a_groupsize", rec.a_bits, rec.a_groupsize)):
            if bits < 16 and group is not None and module.in_features % group:
                raise ConfigError(f"{what} {group} does not divide the input size {module.in_features} of {name}; "
                                  "use a divisor of it (e.g. 32, 64 or 128)")
    head_dim = config_dim(model.config, "head_dim")
    for what, bits, group in (("k_groupsize", rec.k_bits, rec.k_groupsize), ("v_groupsize", rec.v_bits, rec.v_groupsize)):
        if bits < 16 and group is not None and head_dim % group:
            raise ConfigError(f"{what} {group} does not divide head_dim {head_dim}")
