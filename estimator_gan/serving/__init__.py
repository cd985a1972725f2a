"""Serving: the exports' signatures and receivers (`signatures`), writing versioned exports
(`export`), finding and calling them (`saved_model`), and TFLite (`tflite`)."""
