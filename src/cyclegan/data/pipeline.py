"""tf.data input: interleave shards, parse, decode, jitter, shuffle, repeat, prefetch.

Unpaired sampling: each domain repeats and shuffles on its own and an epoch is as many steps as
the *larger* domain needs, so every photo is seen each epoch (the Kaggle starter's `zip` stops
after the 300 Monet images). Random ops are stateless, seeded per element: same seed, same data.
"""

from __future__ import annotations

import math

import tensorflow as tf

from cyclegan.data.tfrecord import decode_image, parse_example

AUTOTUNE = tf.data.AUTOTUNE


def read_images(files: list[str], shuffle_files: bool = False, seed: int = 0) -> tf.data.Dataset:
    """Decoded images ([-1, 1] float32) from TFRecord shards."""
    if not files:
        raise ValueError("no TFRecord shards given")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.map(lambda r: decode_image(parse_example(r)["image"]), num_parallel_calls=AUTOTUNE)


def jitter(image, seed, image_size: int, load_size: int, flip: bool):
    """The paper's augmentation: resize to load_size, random crop image_size, random flip."""
    if load_size > image_size:
        image = tf.image.resize(image, [load_size, load_size], method="bicubic")
        image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=seed)
    else:
        image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return tf.clip_by_value(image, -1.0, 1.0)


def training_domain(files, *, batch_size, image_size, load_size, flip, seed) -> tf.data.Dataset:
    """An endless, shuffled, jittered, batched stream of one domain's images."""
    ds = read_images(files, shuffle_files=True, seed=seed).repeat()
    ds = ds.shuffle(512, seed=seed, reshuffle_each_iteration=True)
    counter = tf.data.Dataset.counter()
    ds = tf.data.Dataset.zip((ds, counter)).map(
        lambda img, i: jitter(
            img, tf.stack([tf.cast(seed, tf.int64), i]), image_size, load_size, flip
        ),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.batch(batch_size, drop_remainder=True)


def unpaired_batches(photo_files, n_photo, monet_files, n_monet, *, global_batch, image_size,
                     load_size, flip, seed) -> tuple[tf.data.Dataset, int]:  # fmt: skip
    """(photo, monet) batches and the steps per epoch (the larger domain seen once)."""
    kwargs = dict(batch_size=global_batch, image_size=image_size, load_size=load_size, flip=flip)
    photos = training_domain(photo_files, seed=seed, **kwargs)
    monets = training_domain(monet_files, seed=seed + 7919, **kwargs)
    steps_per_epoch = max(1, math.ceil(max(n_photo, n_monet) / global_batch))
    pairs = tf.data.Dataset.zip((photos, monets)).prefetch(AUTOTUNE)
    # Endless random streams: workers split each global batch (DATA), not the files.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return pairs.with_options(options), steps_per_epoch


def eval_images(files, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Held-out images at the training size, in file order, batched."""
    ds = read_images(files).map(
        lambda img: tf.image.resize(img, [image_size, image_size], method="bicubic"),
        num_parallel_calls=AUTOTUNE,
    )
    return ds.batch(batch_size).prefetch(AUTOTUNE)
