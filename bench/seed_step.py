"""The user's train step (../shared/seed.txt), transcribed as written: the benchmark baseline.

Six generator calls (G(photo), F(fake_monet), F(monet), G(fake_photo), G(monet), F(photo)),
separate discriminator calls on real and fake, one persistent tape, one Adam for G+F and one per
discriminator. `bce_loss` / `cycle_loss_fn` are what the seed's users define (the TF tutorial):
Keras BCE from logits and mean absolute error. Same as `seed_step` in tests/test_train.py.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_step(G, F, D_M, D_P, optimizer_G, optimizer_D_M, optimizer_D_P, photo, monet):
    bce_loss = keras.losses.BinaryCrossentropy(from_logits=True)

    def cycle_loss_fn(real, other):
        return tf.reduce_mean(tf.abs(real - other))

    with tf.GradientTape(persistent=True) as tape:
        # Generate fake Monet images
        fake_monet = G(photo, training=True)
        # Generate cycled photos
        cycled_photo = F(fake_monet, training=True)

        # Generate fake photos
        fake_photo = F(monet, training=True)
        # Generate cycled Monet images
        cycled_monet = G(fake_photo, training=True)

        # Identity mapping (optional)
        same_monet = G(monet, training=True)
        same_photo = F(photo, training=True)

        # Discriminator outputs
        D_M_real = D_M(monet, training=True)
        D_M_fake = D_M(fake_monet, training=True)

        D_P_real = D_P(photo, training=True)
        D_P_fake = D_P(fake_photo, training=True)

        # Adversarial losses
        adv_loss_G = bce_loss(tf.ones_like(D_M_fake), D_M_fake)
        adv_loss_F = bce_loss(tf.ones_like(D_P_fake), D_P_fake)

        # Cycle consistency losses
        cycle_loss_G = cycle_loss_fn(photo, cycled_photo)
        cycle_loss_F = cycle_loss_fn(monet, cycled_monet)

        # Identity losses
        identity_loss_G = cycle_loss_fn(monet, same_monet)
        identity_loss_F = cycle_loss_fn(photo, same_photo)

        # Total generator losses
        total_gen_loss_G = adv_loss_G + 10 * cycle_loss_G + 5 * identity_loss_G
        total_gen_loss_F = adv_loss_F + 10 * cycle_loss_F + 5 * identity_loss_F

        # Total generator loss
        total_gen_loss = total_gen_loss_G + total_gen_loss_F

        # Discriminator losses
        D_M_loss_real = bce_loss(tf.ones_like(D_M_real), D_M_real)
        D_M_loss_fake = bce_loss(tf.zeros_like(D_M_fake), D_M_fake)
        D_M_loss = (D_M_loss_real + D_M_loss_fake) * 0.5

        D_P_loss_real = bce_loss(tf.ones_like(D_P_real), D_P_real)
        D_P_loss_fake = bce_loss(tf.zeros_like(D_P_fake), D_P_fake)
        D_P_loss = (D_P_loss_real + D_P_loss_fake) * 0.5

    # Compute gradients
    gradients_G = tape.gradient(total_gen_loss, G.trainable_variables + F.trainable_variables)
    gradients_D_M = tape.gradient(D_M_loss, D_M.trainable_variables)
    gradients_D_P = tape.gradient(D_P_loss, D_P.trainable_variables)

    # Apply gradients
    optimizer_G.apply_gradients(zip(gradients_G, G.trainable_variables + F.trainable_variables))
    optimizer_D_M.apply_gradients(zip(gradients_D_M, D_M.trainable_variables))
    optimizer_D_P.apply_gradients(zip(gradients_D_P, D_P.trainable_variables))

    return total_gen_loss, D_M_loss, D_P_loss
