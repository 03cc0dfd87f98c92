"""The CycleGAN trainer: the seed's train step, image pool, LR schedule, strategy, checkpoints.

The step keeps the structure of the user's code (../shared/seed.txt): one persistent
GradientTape around G, F, D_X, D_Y; one optimizer for G and F together, one per discriminator.
Names follow the paper: G: X->Y (photo->Monet), F: Y->X, D_X judges photos, D_Y paintings.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from cyclegan import losses
from cyclegan.config import TrainConfig
from cyclegan.model import build_generator, patchgan_discriminator

LOSS_NAMES = (
    "G_adv", "F_adv", "G_cycle", "F_cycle", "G_identity", "F_identity",
    "G_total", "F_total", "gen_total", "D_X", "D_Y",
)  # fmt: skip


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs/devices), `multi_worker` (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # All local GPUs; on a machine without GPUs, all logical CPU devices (tests split the
        # CPU into two logical devices to exercise the same code path).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise RuntimeError(
                "train.strategy=multi_worker needs the TF_CONFIG environment variable "
                "(set by a Kubeflow TFJob, or by hand: cluster.worker + task)"
            )
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown train.strategy {name!r}")


@keras.saving.register_keras_serializable(package="cyclegan")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The official `linear` policy, driven by the step counter:
    lr = base * (1 - max(0, epoch + 1 - epochs) / (epochs_decay + 1)), epoch counted from 0."""

    def __init__(self, base_lr, steps_per_epoch, epochs, epochs_decay):
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.epochs_decay = epochs_decay

    def __call__(self, step):
        epoch = tf.cast(step // self.steps_per_epoch, tf.float32)
        decayed = tf.maximum(0.0, epoch + 1.0 - self.epochs) / (self.epochs_decay + 1.0)
        return self.base_lr * tf.maximum(0.0, 1.0 - decayed)

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "epochs_decay": self.epochs_decay,
        }


class ImagePool(tf.Module):
    """The paper's history of generated images (Shrivastava et al.), in TF ops.

    Until full, every fake is stored and returned. Then, per image, with probability 0.5 a
    random stored image is returned and replaced by the new one, else the new one is returned.
    Variables are replica-local (ON_READ): one pool per replica. Randomness is stateless and
    keyed by (seed, step, replica), so a resumed run draws what an uninterrupted one would.
    """

    def __init__(self, size: int, image_size: int, seed: int, name: str):
        super().__init__(name=name)
        self.size = size
        self.seed = seed
        if size:
            local = dict(
                trainable=False,
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self.images = tf.Variable(
                tf.zeros([size, image_size, image_size, 3]), name="images", **local
            )
            self.count = tf.Variable(0, dtype=tf.int64, name="count", **local)

    def query(self, fakes: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        if not self.size:
            return fakes
        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group if ctx else 0, tf.int64)
        out = []
        for i in range(fakes.shape[0]):  # static per-replica batch
            image = tf.cast(fakes[i], self.images.dtype)
            key = tf.stack([tf.cast(self.seed, tf.int64), step * 1024 + replica * 64 + i])
            coin, pick = tf.unstack(tf.random.stateless_uniform([2], seed=key))
            index = tf.minimum(tf.cast(pick * self.size, tf.int64), self.size - 1)
            out.append(tf.cond(self.count < self.size,
                               lambda image=image: self._insert(image),
                               lambda image=image, coin=coin, index=index: self._swap(image, coin, index)))  # fmt: skip
        return tf.cast(tf.stack(out), fakes.dtype)

    def _store(self, index, image):
        # assign (not scatter_nd_update): the only update replica-local variables support
        self.images.assign(tf.tensor_scatter_nd_update(self.images, [[index]], image[None]))

    def _insert(self, image):
        self._store(self.count, image)
        self.count.assign_add(1)
        return image

    def _swap(self, image, coin, index):
        def swap():
            old = tf.identity(self.images[index])
            with tf.control_dependencies([old]):
                self._store(index, image)
            return old

        return tf.cond(coin < 0.5, swap, lambda: tf.identity(image))


class CycleGAN(tf.Module):
    """Models, optimizers and pools, plus the train step. Build under `strategy.scope()`."""

    def __init__(self, cfg: TrainConfig, image_size: int, steps_per_epoch: int,
                 global_batch: int):  # fmt: skip
        super().__init__(name="cyclegan")
        self.cfg = cfg
        self.global_batch = global_batch
        self.G = build_generator(cfg, image_size, name="G")  # photo -> Monet
        self.F = build_generator(cfg, image_size, name="F")  # Monet -> photo
        self.D_X = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_X")  # photos
        self.D_Y = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_Y")  # paintings

        self.schedule = LinearDecay(cfg.lr, steps_per_epoch, cfg.epochs, cfg.epochs_decay)

        def adam():
            return keras.optimizers.Adam(self.schedule, beta_1=cfg.beta_1, beta_2=0.999)

        self.optimizer_G = adam()  # G and F together, as in the seed
        self.optimizer_D_X = adam()
        self.optimizer_D_Y = adam()
        self.optimizer_G.build(self.G.trainable_variables + self.F.trainable_variables)
        self.optimizer_D_X.build(self.D_X.trainable_variables)
        self.optimizer_D_Y.build(self.D_Y.trainable_variables)
        self.pool_X = ImagePool(cfg.pool_size, image_size, cfg.seed + 1, name="pool_X")
        self.pool_Y = ImagePool(cfg.pool_size, image_size, cfg.seed + 2, name="pool_Y")

    @property
    def step(self) -> tf.Variable:
        return self.optimizer_G.iterations

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            G=self.G, F=self.F, D_X=self.D_X, D_Y=self.D_Y,
            optimizer_G=self.optimizer_G, optimizer_D_X=self.optimizer_D_X,
            optimizer_D_Y=self.optimizer_D_Y, pool_X=self.pool_X, pool_Y=self.pool_Y,
        )  # fmt: skip

    def _mean(self, per_example: tf.Tensor) -> tf.Tensor:
        return tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)

    def train_step(self, photo: tf.Tensor, monet: tf.Tensor) -> dict[str, tf.Tensor]:
        """One replica's step: the seed's structure, losses averaged over the global batch."""
        cfg = self.cfg
        G, F, D_X, D_Y = self.G, self.F, self.D_X, self.D_Y
        gan, mean = cfg.gan_mode, self._mean
        lambda_id = cfg.lambda_cycle * cfg.lambda_identity
        step = tf.cast(self.step, tf.int64)
        with tf.GradientTape(persistent=True) as tape:
            fake_monet = G(photo, training=True)
            cycled_photo = F(fake_monet, training=True)
            fake_photo = F(monet, training=True)
            cycled_monet = G(fake_photo, training=True)
            same_monet = G(monet, training=True)
            same_photo = F(photo, training=True)

            D_Y_real = D_Y(monet, training=True)
            D_Y_fake = D_Y(fake_monet, training=True)
            D_X_real = D_X(photo, training=True)
            D_X_fake = D_X(fake_photo, training=True)
            if cfg.pool_size:  # the discriminators learn from a history of fakes
                D_Y_fake_for_D = D_Y(self.pool_Y.query(tf.stop_gradient(fake_monet), step), training=True)  # fmt: skip
                D_X_fake_for_D = D_X(self.pool_X.query(tf.stop_gradient(fake_photo), step), training=True)  # fmt: skip
            else:
                D_Y_fake_for_D, D_X_fake_for_D = D_Y_fake, D_X_fake

            G_adv = mean(losses.adversarial(D_Y_fake, True, gan))
            F_adv = mean(losses.adversarial(D_X_fake, True, gan))
            G_cycle = mean(losses.l1(photo, cycled_photo))
            F_cycle = mean(losses.l1(monet, cycled_monet))
            G_identity = mean(losses.l1(monet, same_monet))
            F_identity = mean(losses.l1(photo, same_photo))
            G_total = G_adv + cfg.lambda_cycle * G_cycle + lambda_id * G_identity
            F_total = F_adv + cfg.lambda_cycle * F_cycle + lambda_id * F_identity
            gen_total = G_total + F_total

            D_Y_loss = (mean(losses.adversarial(D_Y_real, True, gan))
                        + mean(losses.adversarial(D_Y_fake_for_D, False, gan))) * 0.5  # fmt: skip
            D_X_loss = (mean(losses.adversarial(D_X_real, True, gan))
                        + mean(losses.adversarial(D_X_fake_for_D, False, gan))) * 0.5  # fmt: skip

        gen_vars = G.trainable_variables + F.trainable_variables
        gradients_G = tape.gradient(gen_total, gen_vars)
        gradients_D_X = tape.gradient(D_X_loss, D_X.trainable_variables)
        gradients_D_Y = tape.gradient(D_Y_loss, D_Y.trainable_variables)
        del tape
        self.optimizer_G.apply_gradients(zip(gradients_G, gen_vars))
        self.optimizer_D_X.apply_gradients(zip(gradients_D_X, D_X.trainable_variables))
        self.optimizer_D_Y.apply_gradients(zip(gradients_D_Y, D_Y.trainable_variables))
        return dict(
            G_adv=G_adv, F_adv=F_adv, G_cycle=G_cycle, F_cycle=F_cycle,
            G_identity=G_identity, F_identity=F_identity, G_total=G_total,
            F_total=F_total, gen_total=gen_total, D_X=D_X_loss, D_Y=D_Y_loss,
        )  # fmt: skip


def distributed_step(strategy: tf.distribute.Strategy, gan: CycleGAN):
    """A compiled function running `gan.train_step` on every replica and summing the
    (already globally averaged) losses."""

    @tf.function
    def step(photo, monet):
        per_replica = strategy.run(gan.train_step, args=(photo, monet))
        return {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }

    return step
