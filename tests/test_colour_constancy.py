"""Shades of Gray colour constancy (data.shades_of_gray): a colour cast is removed, and the kernel's
pipeline and `prepare_image` (hence `kit predict`) apply the same transform."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kernels.config import ConfigError, Experiment, from_dict
from kernels.data import colour_constancy, prepare_image


def test_a_colour_cast_is_removed() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(40, 200, size=(32, 32, 1)).astype(np.float32)
    cast = np.clip(grey * np.array([1.3, 1.0, 0.6], np.float32), 0, 255).astype(np.uint8)  # a reddish light
    out = np.asarray(colour_constancy(cast, 6)).astype(float)
    means = out.reshape(-1, 3).mean(0)
    assert means.max() / means.min() < 1.1 < cast.reshape(-1, 3).mean(0).max() / cast.reshape(-1, 3).mean(0).min()
    assert np.array_equal(np.asarray(colour_constancy(cast, 0)), cast)  # 0 = off
    batch = np.asarray(colour_constancy(np.stack([cast, cast]), 6))  # batched = per image
    assert np.array_equal(batch[0], np.asarray(colour_constancy(cast, 6)))
    black = np.asarray(colour_constancy(np.zeros((8, 8, 3), np.uint8), 6))
    assert black.dtype == np.uint8 and not black.any()


def test_prepare_image_applies_it_when_configured() -> None:
    exp = Experiment(name="x")
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, image_size=32))
    image = np.full((32, 32, 3), (200, 120, 60), np.uint8)
    plain = np.asarray(prepare_image(image, exp))
    on = dataclasses.replace(exp, data=dataclasses.replace(exp.data, shades_of_gray=6))
    balanced = np.asarray(prepare_image(image, on))
    assert np.array_equal(plain[0, 0], [200, 120, 60])
    assert np.ptp(balanced[0, 0]) < 2  # a flat coloured image becomes grey


def test_a_negative_power_is_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="data.shades_of_gray: got -1"):
        from_dict({"name": "x", "data": {"shades_of_gray": -1}}, "x.toml")
