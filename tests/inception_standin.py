"""A small stand-in for the Inception graph `classify_image_graph_def.pb`, with the same
interface: a batch-1 `ExpandDims:0` [1, H, W, 3] float pixels in 0..255, resized inside the graph
to 299x299 (`ResizeBilinear`) and scaled, `pool_3:0` [1, 1, 1, 2048] features, and
`softmax/logits/MatMul` of `pool_3/_reshape` with `softmax/weights` [2048, 1008] (plus a bias,
`softmax/biases`, that the Inception Score leaves out). Random fixed weights, not a classifier:
only the plumbing is real."""
import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
NUM_CLASSES = 1008
FEATURES = 2048


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv": rng.standard_normal((3, 3, 3, 16)).astype(np.float32) * 0.3,
        "expand": rng.standard_normal((1, 1, 16, FEATURES)).astype(np.float32) * 0.5,
        "softmax/weights": rng.standard_normal((FEATURES, NUM_CLASSES)).astype(np.float32) * 0.5,
        "softmax/biases": rng.standard_normal(NUM_CLASSES).astype(np.float32),
    }


def graph_def(seed=0) -> "tf.compat.v1.GraphDef":
    w = weights(seed)
    graph = tf.Graph()
    with graph.as_default():
        decoded = v1.placeholder(tf.float32, [None, None, 3], name="Cast")
        expanded = tf.expand_dims(decoded, 0, name="ExpandDims")
        resized = v1.image.resize_bilinear(expanded, tf.constant([299, 299]), name="ResizeBilinear")
        scaled = tf.multiply(tf.subtract(resized, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
        x = tf.nn.relu(tf.nn.conv2d(scaled, tf.constant(w["conv"]), strides=8, padding="VALID"))
        x = tf.nn.avg_pool2d(x, ksize=38, strides=1, padding="VALID")
        x = tf.nn.relu(tf.nn.conv2d(x, tf.constant(w["expand"]), strides=1, padding="VALID"))
        pool = tf.nn.avg_pool2d(x, ksize=1, strides=1, padding="VALID", name="pool_3")
        flat = tf.reshape(pool, [1, FEATURES], name="pool_3/_reshape")
        logits = tf.matmul(flat, tf.constant(w["softmax/weights"], name="softmax/weights"),
                           name="softmax/logits/MatMul")
        logits = tf.nn.bias_add(logits, tf.constant(w["softmax/biases"], name="softmax/biases"),
                                name="softmax/logits")
        tf.nn.softmax(logits, name="softmax")
    return graph.as_graph_def()


def write(path, seed=0) -> str:
    with open(path, "wb") as f:
        f.write(graph_def(seed).SerializeToString())
    return str(path)


def run_one_by_one(path, pixels):
    """pool_3 features and bias-free softmax of `pixels` [N, H, W, 3] (0..255), each image fed
    alone into the graph's batch-1 `ExpandDims:0`, as improved-gan first ran it."""
    gd = v1.GraphDef()
    with open(path, "rb") as f:
        gd.ParseFromString(f.read())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(gd, name="")
    weights_value = None
    feats = []
    with v1.Session(graph=graph) as session:
        weights_value = session.run(graph.get_operation_by_name("softmax/logits/MatMul").inputs[1])
        for image in pixels:
            feats.append(session.run("pool_3:0", {"ExpandDims:0": image[None]}).reshape(-1))
    feats = np.asarray(feats, np.float64)
    logits = feats @ weights_value.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return feats, probs / probs.sum(axis=1, keepdims=True)
