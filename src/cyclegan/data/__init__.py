"""Data: sample-data maker, image listing, TFRecord codec, tf.data input pipeline."""
