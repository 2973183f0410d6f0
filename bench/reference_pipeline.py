"""The reference notebook's training input pipeline, re-implemented from its description.

In:  TFRecord files in the competition schema, the image size, the batch size.
Out: an endless tf.data.Dataset of (float32 images in 0..1 [B, dim, dim, 3], int64 targets [B]).

Written from ../shared/notes/anchors.md ("triple stratified k-fold with TFRecords", 2020), not copied:
records read with AUTOTUNE parallel reads -> cache -> repeat -> shuffle(8192), order not kept ->
parse one example at a time -> decode, /255, a random affine done as a per-pixel ``gather_nd``
(rotation 180 deg x N(0,1), shear 2 deg x N(0,1), zoom 1 + N(0,1)/8 per axis, shift 8 px x N(0,1) per
axis; the four 3x3 matrices multiplied, every destination pixel's integer coordinates mapped through
them, rounded down, clamped to the image, nearest neighbour) -> random left-right flip -> random
saturation 0.7-1.3, contrast 0.8-1.2, brightness +-0.1 -> batch -> prefetch, all with AUTOTUNE.
It is the baseline `bench.pipeline` measures the kernel's pipeline against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

REF_SHUFFLE = 8192
REF_ROTATION_DEG = 180.0
REF_SHEAR_DEG = 2.0
REF_ZOOM_DIV = 8.0
REF_SHIFT_PX = 8.0
REF_SATURATION = (0.7, 1.3)
REF_CONTRAST = (0.8, 1.2)
REF_BRIGHTNESS = 0.1


def ref_matrix(rotation_deg: tf.Tensor, shear_deg: tf.Tensor, zoom_h: tf.Tensor, zoom_w: tf.Tensor,
               shift_h: tf.Tensor, shift_w: tf.Tensor) -> tf.Tensor:
    """rotation @ shear @ zoom @ shift, each a 3x3 matrix on (row, column, 1) coordinates."""
    rot = rotation_deg * math.pi / 180.0
    shr = shear_deg * math.pi / 180.0
    one, zero = tf.ones_like(rot), tf.zeros_like(rot)

    def mat(*values: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.stack(values), [3, 3])

    rotation = mat(tf.cos(rot), tf.sin(rot), zero, -tf.sin(rot), tf.cos(rot), zero, zero, zero, one)
    shear = mat(one, tf.sin(shr), zero, zero, tf.cos(shr), zero, zero, zero, one)
    zoom = mat(one / zoom_h, zero, zero, zero, one / zoom_w, zero, zero, zero, one)
    shift = mat(one, zero, shift_h, zero, one, shift_w, zero, zero, one)
    return rotation @ shear @ (zoom @ shift)


def ref_affine(image: tf.Tensor, dim: int) -> tf.Tensor:
    """Random affine of one [dim, dim, 3] image by nearest-neighbour gather_nd with edge clamp."""
    normal = tf.random.normal([6])
    m = ref_matrix(REF_ROTATION_DEG * normal[0], REF_SHEAR_DEG * normal[1], 1.0 + normal[2] / REF_ZOOM_DIV,
                   1.0 + normal[3] / REF_ZOOM_DIV, REF_SHIFT_PX * normal[4], REF_SHIFT_PX * normal[5])
    half = dim // 2
    # destination coordinates, centred: rows run from +half down, columns from -half up
    rows = tf.repeat(tf.range(half, half - dim, -1), dim)
    cols = tf.tile(tf.range(-half, dim - half), [dim])
    coords = tf.cast(tf.stack([rows, cols, tf.ones([dim * dim], tf.int32)]), tf.float32)
    src = tf.cast(tf.floor(m @ coords), tf.int32)
    src = tf.clip_by_value(src, -half + 1, half)
    index = tf.stack([half - src[0], half - 1 + src[1]], axis=1)
    return tf.reshape(tf.gather_nd(image, index), [dim, dim, 3])


def ref_prepare(jpeg: tf.Tensor, dim: int) -> tf.Tensor:
    """Decode, scale to 0..1 and augment one image the reference way."""
    image = tf.cast(tf.io.decode_jpeg(jpeg, channels=3), tf.float32) / 255.0
    image = ref_affine(image, dim)
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_saturation(image, *REF_SATURATION)
    image = tf.image.random_contrast(image, *REF_CONTRAST)
    image = tf.image.random_brightness(image, REF_BRIGHTNESS)
    return tf.reshape(image, [dim, dim, 3])


def ref_parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One serialized example -> (JPEG bytes, target)."""
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "target": tf.io.FixedLenFeature([], tf.int64)}
    example = tf.io.parse_single_example(record, spec)
    return example["image"], example["target"]


def reference_dataset(files: Sequence[str], dim: int, batch_size: int) -> tf.data.Dataset:
    """The reference's endless, augmented training dataset."""
    options = tf.data.Options()
    options.deterministic = False
    ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=tf.data.AUTOTUNE).with_options(options)
    ds = ds.cache().repeat().shuffle(REF_SHUFFLE)
    ds = ds.map(lambda r: (lambda jpeg, target: (ref_prepare(jpeg, dim), target))(*ref_parse(r)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
