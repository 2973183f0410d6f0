"""The backbone registry as plain data: every keras.applications backbone a config may name.

In:  nothing. Out: `BACKBONES` (name -> `BackboneSpec`: keras.applications constructor, input normalisation,
     ImageNet input size, smallest size), `NORMALIZATIONS` and `register_backbone`. No TensorFlow here, so
     `kit` reads the names without loading it (`kit.registries`); `kernels.models` builds the networks.
Adding a backbone is one line in `_backbones_register_defaults`.
"""

from __future__ import annotations

from dataclasses import dataclass

NORMALIZATIONS = ("none_0_255", "minus1_1", "torch", "unit")


@dataclass(frozen=True)
class BackboneSpec:
    """One registered keras.applications backbone."""

    name: str
    constructor: str  # attribute name in keras.applications
    normalization: str  # one of NORMALIZATIONS: what the model does to 0..255 input first
    default_size: int  # the input size its ImageNet weights were trained at
    min_size: int = 32  # smallest input keras.applications accepts


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, constructor: str, normalization: str, default_size: int, min_size: int = 32) -> None:
    """Add a backbone to the registry (one line per backbone)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"backbone {name}: normalization {normalization!r} not in {NORMALIZATIONS}")
    BACKBONES[name] = BackboneSpec(name, constructor, normalization, default_size, min_size)


def _backbones_register_defaults() -> None:
    for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
        register_backbone(f"efficientnet_b{i}", f"EfficientNetB{i}", "none_0_255", size)
    for i, size in enumerate((224, 240, 260, 300)):
        register_backbone(f"efficientnetv2_b{i}", f"EfficientNetV2B{i}", "none_0_255", size)
    register_backbone("efficientnetv2_s", "EfficientNetV2S", "none_0_255", 384)
    register_backbone("efficientnetv2_m", "EfficientNetV2M", "none_0_255", 480)
    register_backbone("efficientnetv2_l", "EfficientNetV2L", "none_0_255", 480)
    register_backbone("resnet50v2", "ResNet50V2", "minus1_1", 224)
    register_backbone("resnet101v2", "ResNet101V2", "minus1_1", 224)
    register_backbone("resnet152v2", "ResNet152V2", "minus1_1", 224)
    register_backbone("densenet121", "DenseNet121", "torch", 224)
    register_backbone("densenet169", "DenseNet169", "torch", 224)
    register_backbone("densenet201", "DenseNet201", "torch", 224)
    register_backbone("inception_v3", "InceptionV3", "minus1_1", 299, min_size=75)
    register_backbone("xception", "Xception", "minus1_1", 299, min_size=71)
    register_backbone("convnext_tiny", "ConvNeXtTiny", "none_0_255", 224)
    register_backbone("convnext_small", "ConvNeXtSmall", "none_0_255", 224)
    register_backbone("convnext_base", "ConvNeXtBase", "none_0_255", 224)
    register_backbone("mobilenet_v3_small", "MobileNetV3Small", "none_0_255", 224)
    register_backbone("mobilenet_v3_large", "MobileNetV3Large", "none_0_255", 224)


_backbones_register_defaults()
