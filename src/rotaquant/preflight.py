"""Checks a job runs before its slow work: settings, data and output paths before the model is
loaded (model-dependent settings, such as group sizes, are checked by the jobs right after
loading with :func:`rotaquant.quant.pipeline.check_group_sizes`, before anything is changed).

A run that would fail at its end (an unwritable JSON path, a group size that does not divide a
layer, calibration on the test set) fails here instead, in a second, with a named error.
"""

from __future__ import annotations

import os

from .config import check_device_dtype
from .data import check_calibration_source
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
