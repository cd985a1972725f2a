"""Sample-quality evaluation: numpy metrics (`metrics`), the offline feature classifier
(`classifier`), the reference Inception network of FID, KID and IS (`inception`), evaluating
checkpoints and exports (`evaluate`), and reports, plots and TensorBoard summaries of the
results (`report`). (The EVAL spec's metric ops are `model.eval_metrics`.)"""
