"""The CycleGAN trainer: the seed's train step, image pool, LR schedule, strategy, checkpoints.

The step keeps the structure of the user's code (../shared/seed.txt): one persistent
GradientTape around G, F, D_X, D_Y; one optimizer for G and F together, one per discriminator.
Names follow the paper: G: X->Y (photo->Monet), F: Y->X, D_X judges photos, D_Y paintings.

Speed options (params `train.*`, measured in docs/BENCHMARKS.md):
- `fuse_calls`: G on [photo; monet] (fake + identity), F on [monet; photo; fake Monet] (fake,
  identity, cycled photo), G on the fake photos (cycled Monet), and each D on [real; fake]
  (with an image pool: on [real; pooled fake] and on [fake]): 3 generator and 2 (4)
  discriminator calls instead of 6 and 4 (6). Instance norm is per image and there is no
  batch norm, so each image's result is the one of the separate calls (up to float summation
  order; dropout masks are drawn for the concatenated batch instead, same distribution).
- `jit_compile`: XLA-compile the step.
- `mixed_precision`: `bf16` / `fp16` compute with float32 variables, float32 losses and
  float32 instance-norm statistics; `fp16` adds dynamic loss scaling (for GPUs).
- `instance_norm`: `fused` (per-image fused batch-norm kernels) or `moments` (tf.nn.moments).
- `small_conv`: `matmul` runs convolutions with at most 2x2 output pixels per image (transposed:
  8x8 input; the U-Net's innermost layers, where most of its weights are) as one matmul each;
  `native`: TF's conv ops.
- Adam's update runs as one fused kernel per variable (ResourceApplyAdam, Keras' formula).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from cyclegan import losses
from cyclegan.config import TrainConfig
from cyclegan.model import build_generator, patchgan_discriminator
from cyclegan.model.layers import layer_impls

LOSS_NAMES = (
    "G_adv", "F_adv", "G_cycle", "F_cycle", "G_identity", "F_identity",
    "G_total", "F_total", "gen_total", "D_X", "D_Y",
)  # fmt: skip


# train.mixed_precision -> Keras dtype policy (variables stay float32 in all of them)
PRECISION_POLICIES = {"none": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


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


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam with each variable's update as one kernel (ResourceApplyAdam) instead of a
    dozen elementwise ops: the same formula (m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)), the same slot variables and
    checkpoint layout, a third of the memory traffic."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, local_step),
            beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


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


def _batch(x: tf.Tensor):
    """The static batch size when known (keeps shapes static through slicing), else dynamic."""
    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


class CycleGAN(tf.Module):
    """Models, optimizers and pools, plus the train step. Build under `strategy.scope()`."""

    def __init__(self, cfg: TrainConfig, image_size: int, steps_per_epoch: int,
                 global_batch: int):  # fmt: skip
        super().__init__(name="cyclegan")
        self.cfg = cfg
        self.global_batch = global_batch
        self.image_size = image_size
        self.loss_scaling = cfg.mixed_precision == "fp16"
        self.G, self.F, self.D_X, self.D_Y = self.build_models(cfg.mixed_precision)

        self.schedule = LinearDecay(cfg.lr, steps_per_epoch, cfg.epochs, cfg.epochs_decay)

        def adam():
            optimizer = FusedAdam(self.schedule, beta_1=cfg.beta_1, beta_2=0.999)
            if self.loss_scaling:  # dynamic loss scale; non-finite steps are skipped
                return keras.optimizers.LossScaleOptimizer(optimizer)
            return optimizer

        self.optimizer_G = adam()  # G and F together, as in the seed
        self.optimizer_D_X = adam()
        self.optimizer_D_Y = adam()
        self.optimizer_G.build(self.G.trainable_variables + self.F.trainable_variables)
        self.optimizer_D_X.build(self.D_X.trainable_variables)
        self.optimizer_D_Y.build(self.D_Y.trainable_variables)
        self.pool_X = ImagePool(cfg.pool_size, image_size, cfg.seed + 1, name="pool_X")
        self.pool_Y = ImagePool(cfg.pool_size, image_size, cfg.seed + 2, name="pool_Y")
        # distributed_step may swap in an XLA-compiled version (jit_compile under a strategy
        # with several devices: the update, with its cross-device sums, stays outside XLA)
        self.replica_gradients = self.losses_and_gradients

    def build_models(self, precision: str = "none"):
        """G, F, D_X, D_Y under the dtype policy of `precision` (restored afterwards)."""
        cfg = self.cfg
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(PRECISION_POLICIES[precision])
        try:
            with layer_impls(instance_norm=cfg.instance_norm, small_conv=cfg.small_conv):
                G = build_generator(cfg, self.image_size, name="G")  # photo -> Monet
                F = build_generator(cfg, self.image_size, name="F")  # Monet -> photo
                D_X = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_X")  # photos
                D_Y = patchgan_discriminator(cfg.ndf, cfg.n_layers_d, name="D_Y")  # paintings
        finally:
            keras.config.set_dtype_policy(previous)
        return G, F, D_X, D_Y

    def export_generators(self) -> tuple[keras.Model, keras.Model]:
        """G and F for saving: float32 copies when training ran in mixed precision, so the
        exported models compute in float32 wherever they are loaded."""
        if self.cfg.mixed_precision == "none":
            return self.G, self.F
        G, F, _, _ = self.build_models("none")
        G.set_weights(self.G.get_weights())
        F.set_weights(self.F.get_weights())
        return G, F

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

    def _generate(self, photo, monet):
        """fake, cycled and identity images of both domains (seed: six generator calls)."""
        G, F = self.G, self.F
        if self.cfg.fuse_calls:
            # G on [photo; monet]: fake and identity Monet; F on [monet; photo; fake Monet]:
            # fake photo, identity photo, cycled photo; G on the fake photos: cycled Monet.
            # 3 calls, the fewest the two cycles allow (each needs the other generator first).
            n = _batch(photo)
            both = G(tf.concat([photo, monet], 0), training=True)
            fake_monet, same_monet = both[:n], both[n:]
            parts = [monet, photo, fake_monet]
            three = F(tf.concat([tf.cast(p, F.compute_dtype) for p in parts], 0), training=True)
            fake_photo, same_photo, cycled_photo = three[:n], three[n : 2 * n], three[2 * n :]
            cycled_monet = G(fake_photo, training=True)
            return fake_monet, cycled_photo, fake_photo, cycled_monet, same_monet, same_photo
        fake_monet = G(photo, training=True)  # the seed's six calls
        fake_photo = F(monet, training=True)
        same_monet = G(monet, training=True)
        same_photo = F(photo, training=True)
        cycled_photo = F(fake_monet, training=True)
        cycled_monet = G(fake_photo, training=True)
        return fake_monet, cycled_photo, fake_photo, cycled_monet, same_monet, same_photo

    def _judge(self, D, real, fake, pooled):
        """D's logits on real, fake (for the generator loss) and the fakes D learns from
        (`pooled`, None = the same fakes). With fuse_calls: one call on [real; fake]; with a
        pool, one on D's own batch [real; pooled] and one on [fake], as batching all three would
        run each loss's backward pass over images it does not depend on (5-11% slower)."""
        if not self.cfg.fuse_calls:
            real_logits, fake_logits = D(real, training=True), D(fake, training=True)
            pooled_logits = fake_logits if pooled is None else D(pooled, training=True)
            return real_logits, fake_logits, pooled_logits
        n = _batch(real)
        learns_from = fake if pooled is None else pooled
        parts = [tf.cast(p, D.compute_dtype) for p in (real, learns_from)]
        logits = D(tf.concat(parts, 0), training=True)
        fake_logits = logits[n:] if pooled is None else D(fake, training=True)
        return logits[:n], fake_logits, logits[n:]

    def train_step(self, photo: tf.Tensor, monet: tf.Tensor) -> dict[str, tf.Tensor]:
        """One replica's step: the seed's structure, losses averaged over the global batch."""
        values, (gradients_G, gradients_D_X, gradients_D_Y) = self.replica_gradients(photo, monet)
        # (a LossScaleOptimizer unscales, and skips the update when a gradient is not finite)
        gen_vars = self.G.trainable_variables + self.F.trainable_variables
        self.optimizer_G.apply_gradients(zip(gradients_G, gen_vars))
        self.optimizer_D_X.apply_gradients(zip(gradients_D_X, self.D_X.trainable_variables))
        self.optimizer_D_Y.apply_gradients(zip(gradients_D_Y, self.D_Y.trainable_variables))
        return values

    def losses_and_gradients(self, photo: tf.Tensor, monet: tf.Tensor):
        """The seed's tape: all losses, and the gradients for G+F, D_X, D_Y."""
        cfg = self.cfg
        G, F, D_X, D_Y = self.G, self.F, self.D_X, self.D_Y
        gan, mean = cfg.gan_mode, self._mean
        lambda_id = cfg.lambda_cycle * cfg.lambda_identity
        step = tf.cast(self.step, tf.int64)
        with tf.GradientTape(persistent=True) as tape:
            fake_monet, cycled_photo, fake_photo, cycled_monet, same_monet, same_photo = (
                self._generate(photo, monet)
            )
            pooled_monet = pooled_photo = None
            if cfg.pool_size:  # the discriminators learn from a history of fakes
                pooled_monet = self.pool_Y.query(tf.stop_gradient(fake_monet), step)
                pooled_photo = self.pool_X.query(tf.stop_gradient(fake_photo), step)
            D_Y_real, D_Y_fake, D_Y_fake_for_D = self._judge(D_Y, monet, fake_monet, pooled_monet)
            D_X_real, D_X_fake, D_X_fake_for_D = self._judge(D_X, photo, fake_photo, pooled_photo)

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
            if self.loss_scaling:
                targets = (self.optimizer_G.scale_loss(gen_total),
                           self.optimizer_D_X.scale_loss(D_X_loss),
                           self.optimizer_D_Y.scale_loss(D_Y_loss))  # fmt: skip
            else:
                targets = (gen_total, D_X_loss, D_Y_loss)

        gradients_G = tape.gradient(targets[0], G.trainable_variables + F.trainable_variables)
        gradients_D_X = tape.gradient(targets[1], D_X.trainable_variables)
        gradients_D_Y = tape.gradient(targets[2], D_Y.trainable_variables)
        del tape
        values = dict(
            G_adv=G_adv, F_adv=F_adv, G_cycle=G_cycle, F_cycle=F_cycle,
            G_identity=G_identity, F_identity=F_identity, G_total=G_total,
            F_total=F_total, gen_total=gen_total, D_X=D_X_loss, D_Y=D_Y_loss,
        )  # fmt: skip
        return values, (gradients_G, gradients_D_X, gradients_D_Y)


def distributed_step(strategy: tf.distribute.Strategy, gan: CycleGAN):
    """A compiled function running `gan.train_step` on every replica and summing the
    (already globally averaged) losses.

    train.jit_compile: with one device the whole step is XLA-compiled (Adam's updates fuse with
    the rest); with several, each replica's losses and gradients are (XLA cannot place a step
    touching variables on several devices), and the all-reduce + update run as usual.
    """
    whole = (
        gan.cfg.jit_compile
        and strategy.num_replicas_in_sync == 1
        and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    )
    if gan.cfg.jit_compile and not whole:
        gan.replica_gradients = tf.function(gan.losses_and_gradients, jit_compile=True)

    @tf.function(jit_compile=whole)
    def step(photo, monet):
        per_replica = strategy.run(gan.train_step, args=(photo, monet))
        return {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }

    return step
