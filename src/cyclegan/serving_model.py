"""The registered MLflow pyfunc: uint8 RGB images in, uint8 Monet-style images out.

Logged as "models from code": this file is copied into the model, so serving needs only the
model's own requirements (TensorFlow, NumPy, MLflow), not the cyclegan package. Pre- and
post-processing live here: scaling to [-1, 1], reflection padding to the generator's size
multiple, and cropping back, so any image size works.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class MonetGenerator(PythonModel):
    def load_context(self, context):
        import tensorflow as tf

        self._model = tf.saved_model.load(context.artifacts["generator"])
        self._serve = self._model.signatures["serve"]
        self._input = list(self._serve.structured_input_signature[1])[0]
        config = context.model_config or {}
        self.multiple = int(config.get("size_multiple", 4))
        self.batch_size = int(config.get("batch_size", 8))

    def _translate(self, batch):
        import tensorflow as tf

        n, h, w, _ = batch.shape
        ph, pw = -h % self.multiple, -w % self.multiple
        x = tf.convert_to_tensor(batch, tf.float32) / 127.5 - 1.0
        if ph or pw:
            mode = "REFLECT" if ph < h and pw < w else "SYMMETRIC"
            x = tf.pad(x, [[0, 0], [0, ph], [0, pw], [0, 0]], mode=mode)
        (y,) = self._serve(**{self._input: x}).values()
        y = y[:, :h, :w, :]
        return np.clip((y.numpy() + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images [N, H, W, 3], got shape {images.shape}")
        out = np.concatenate(
            [self._translate(images[i : i + self.batch_size])
             for i in range(0, len(images), self.batch_size)]
        )  # fmt: skip
        return out[0] if single else out


mlflow.models.set_model(MonetGenerator())
