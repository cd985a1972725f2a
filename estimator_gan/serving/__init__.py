"""Serving: writing versioned exports (`export`), finding and calling them (`saved_model`), and
TFLite (`tflite`). The signatures they carry are `model.signatures`."""
