"""The registry names, as plain data: what `kit render`/`kit run`/`kit push` check a config against
without importing TensorFlow.

In:  nothing. Out: `BACKBONE_NAMES` (read from `kernels.backbones.BACKBONES`, itself plain data) and
`AUGMENT_DEFAULTS` (name -> the parameter defaults of each entry of `kernels.augment.AUGMENTATIONS`, in
registry order). The augmentation registry lives beside its TensorFlow code, so its defaults are copied
here; tests/test_startup.py fails when the copy and the registry disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kernels.backbones import BACKBONES

BACKBONE_NAMES: tuple[str, ...] = tuple(sorted(BACKBONES))  # the kernel's own registry (plain data)

AUGMENT_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "dihedral": MappingProxyType({"flip_lr": True, "flip_ud": True, "transpose": True}),
    "affine": MappingProxyType({"p": 1.0, "rotation": 180.0, "shear": 2.0, "zoom": 0.125, "shift": 0.03}),
    "resized_crop": MappingProxyType({"p": 1.0, "scale_min": 0.6, "ratio_max": 1.333}),
    "color": MappingProxyType({"p": 1.0, "brightness": 0.1, "contrast": 0.2, "saturation": 0.3, "hue": 0.0}),
    "cutout": MappingProxyType({"p": 0.5, "holes": 8, "size": 0.1, "fill": 0.0}),
    "hair": MappingProxyType({"p": 0.3, "max_hairs": 6, "width": 0.006, "length": 0.6, "darkness": 0.85}),
})
