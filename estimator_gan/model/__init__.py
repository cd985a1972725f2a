"""The GAN model: networks (`networks`, user networks in `custom`), losses (`losses`), the
per-graph model value with its losses and updates (`gan`), and the Estimator model_fns built
from it (`model_fns`), with their EVAL metric ops (`eval_metrics`) and serving signatures and
receivers (`signatures`)."""
