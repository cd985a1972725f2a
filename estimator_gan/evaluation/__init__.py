"""Sample-quality evaluation: numpy metrics (`metrics`), graph metric ops for EVAL specs
(`metric_ops`), the offline feature classifier (`classifier`), evaluating checkpoints and
exports (`evaluate`), and reports, plots and TensorBoard summaries of the results (`report`)."""
