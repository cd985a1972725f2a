"""A custom GAN loss: non-saturating with an R1 gradient penalty on real data (Mescheder et al.,
2018), registered by name and used by the default job (a DCGAN on the bundled digits).

    python examples/custom_loss.py --steps 1000 --model-dir runs/r1

A loss is two functions: `discriminator_loss(inputs, config)` gets a `DiscriminatorLossInputs`
(logits on real and fake, both batches, and D itself); `generator_loss(fake_logits, config)`
gets only the logits of the fakes. `config` is the config's `loss` section.
"""
import argparse
import os

import tensorflow as tf

import estimator_gan as eg

R1_GAMMA = 1.0


def r1_discriminator_loss(inputs, config):
    real_loss = tf.reduce_mean(tf.nn.softplus(-inputs.real_logits))
    fake_loss = tf.reduce_mean(tf.nn.softplus(inputs.fake_logits))
    grads = tf.gradients(tf.reduce_sum(inputs.real_logits), [inputs.real])[0]
    r1 = tf.reduce_mean(tf.reduce_sum(tf.square(grads), axis=list(range(1, grads.shape.rank))))
    return real_loss + fake_loss + 0.5 * R1_GAMMA * r1


def generator_loss(fake_logits, config):
    return tf.reduce_mean(tf.nn.softplus(-fake_logits))


eg.register_loss("r1_non_saturating", r1_discriminator_loss, generator_loss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--model-dir", default=os.path.join("runs", "r1"))
    args = parser.parse_args()

    gan = eg.GAN(eg.load_config(None, [f"train.max_steps={args.steps}"]),
                 model_dir=args.model_dir, loss="r1_non_saturating")
    step = gan.train()
    metrics = gan.evaluate(steps=2)
    print(f"done: step {step}; D accuracy on real {metrics['discriminator/accuracy_real']:.2f}, "
          f"on fake {metrics['discriminator/accuracy_fake']:.2f}")


if __name__ == "__main__":
    main()
