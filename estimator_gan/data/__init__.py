"""Real examples for the GAN: data sources (`sources`), the tf.data input pipeline that feeds
both networks (`pipeline`), image helpers (`images`). Named input_fn builders per source are
`estimator_gan.input_fns`.
"""
