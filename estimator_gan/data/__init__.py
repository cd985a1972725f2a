"""Real examples for the GAN: data sources (`sources`), the tf.data input pipeline that feeds
both networks (`pipeline`), input_fn builders per source (`builders`), image helpers (`images`).
"""
