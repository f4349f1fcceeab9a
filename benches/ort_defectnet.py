"""The defect network of models/src/model.rs written as an ONNX graph with random
weights and timed in ONNX Runtime on the CPU at batch 1, fp32 and int8, as the peer of
the int8 path in `cargo bench --bench inference`. The int8 model is ONNX Runtime's own
static quantisation of the same graph (QDQ, per-channel signed weights, unsigned
activations, calibrated on frames like the benchmark's). Prints one JSON line per
precision: median frames per second.

usage: python benches/ort_defectnet.py [--threads 2] [--width 640] [--height 360]
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

# (name, inputs, outputs, kernel, stride, dilation, relu): DefectNetConfig's defaults
# with the box head, in the order the network computes them.
LAYERS = [
    ("stem", 3, 16, 3, 2, 1, True),
    ("mid", 16, 24, 3, 2, 1, True),
    ("cell", 24, 40, 3, 2, 1, True),
    ("local", 40, 40, 3, 1, 1, True),
    ("context", 40, 40, 3, 1, 2, True),
    ("wide", 40, 40, 3, 1, 4, True),
]


def conv(nodes, weights, rng, name, source, inputs, outputs, kernel, stride, dilation, relu):
    """Appends a convolution (He-initialised) and its ReLU; returns the output's name."""
    w = rng.normal(0.0, np.sqrt(2.0 / (inputs * kernel * kernel)), (outputs, inputs, kernel, kernel)).astype(np.float32)
    b = rng.normal(0.0, 0.01, outputs).astype(np.float32)
    weights += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
    pad = dilation * (kernel - 1) // 2
    out = f"{name}.out"
    nodes.append(helper.make_node(
        "Conv", [source, f"{name}.w", f"{name}.b"], [out], strides=[stride, stride],
        dilations=[dilation, dilation], pads=[pad] * 4, kernel_shape=[kernel, kernel]))
    if relu:
        nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"]))
        return f"{name}.relu"
    return out


def defect_net(width, height):
    rng = np.random.default_rng(0)
    nodes, weights = [], [numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255"),
                          numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes += [helper.make_node("Mul", ["pixels", "inv255"], ["scaled"]),
              helper.make_node("Sub", ["scaled", "half"], ["normalised"])]
    x = "normalised"
    for layer in LAYERS:
        x = conv(nodes, weights, rng, layer[0], x, *layer[1:])
    logits = conv(nodes, weights, rng, "head", x, 40, 7, 1, 1, 1, False)
    nodes.append(helper.make_node("Softmax", [logits], ["probabilities"], axis=1))
    hidden = conv(nodes, weights, rng, "box_hidden", x, 40, 24, 3, 1, 1, True)
    boxes = conv(nodes, weights, rng, "box_out", hidden, 24, 4, 1, 1, 1, False)
    rows, cols = height, width
    for _ in range(3):
        rows, cols = (rows + 1) // 2, (cols + 1) // 2
    graph = helper.make_graph(
        nodes, "defect_net",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 7, rows, cols]),
         helper.make_tensor_value_info(boxes, TensorProto.FLOAT, [1, 4, rows, cols])],
        weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bench_frame(width, height, seed=0):
    """The criterion bench's frame: `(i * 7919 + seed * 31) % 251` over planar RGB."""
    i = np.arange(3 * width * height, dtype=np.int64)
    return ((i * 7919 + seed * 31) % 251).astype(np.float32).reshape(1, 3, height, width)


class Frames(CalibrationDataReader):
    def __init__(self, width, height, count=8):
        self.frames = iter([{"pixels": bench_frame(width, height, seed)} for seed in range(count)])

    def get_next(self):
        return next(self.frames, None)


def time_session(path, threads, frame, seconds):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"pixels": frame})
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 20:
        start = time.perf_counter()
        session.run(None, {"pixels": frame})
        samples.append(time.perf_counter() - start)
    return 1.0 / statistics.median(samples), len(samples)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = os.path.join(tmp, "defect_net.onnx")
        int8 = os.path.join(tmp, "defect_net.int8.onnx")
        onnx.save(defect_net(args.width, args.height), fp32)
        quantize_static(fp32, int8, Frames(args.width, args.height), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        frame = bench_frame(args.width, args.height, 99)
        for precision, path in (("fp32", fp32), ("int8", int8)):
            fps, runs = time_session(path, args.threads, frame, args.seconds)
            print(json.dumps({"peer": f"onnxruntime_{precision}", "version": ort.__version__, "batch": 1,
                              "threads": args.threads, "frames_per_s": fps, "runs": runs}), flush=True)


if __name__ == "__main__":
    main()
