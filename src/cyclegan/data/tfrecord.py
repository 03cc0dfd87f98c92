"""TFRecord codec in Kaggle's gan-getting-started schema: image_name, image (JPEG), target.

Using Kaggle's schema means their `monet_tfrec/`/`photo_tfrec/` files and ours read the same way.
"""

from __future__ import annotations

import tensorflow as tf

FEATURES = {
    "image_name": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.FixedLenFeature([], tf.string),
    "target": tf.io.FixedLenFeature([], tf.string),
}


def encode_example(name: str, jpeg: bytes, target: str) -> bytes:
    def _bytes(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image_name": _bytes(name.encode()),
                "image": _bytes(jpeg),
                "target": _bytes(target.encode()),
            }
        )
    )
    # deterministic: protobuf map order otherwise varies between processes (hash seeds), and
    # reruns must write byte-identical shards
    return example.SerializeToString(deterministic=True)


def parse_example(record: tf.Tensor) -> dict[str, tf.Tensor]:
    return tf.io.parse_single_example(record, FEATURES)


def decode_image(jpeg: tf.Tensor) -> tf.Tensor:
    """JPEG bytes -> float32 HxWx3 in [-1, 1] (the generators' tanh range)."""
    image = tf.io.decode_jpeg(jpeg, channels=3)
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def read_examples(path: str) -> list[dict[str, bytes]]:
    """All records of one TFRecord file as {feature: bytes} (for checks and tools, not training)."""
    out = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        out.append({k: feature[k].bytes_list.value[0] for k in FEATURES if k in feature})
    return out
