#!/usr/bin/env python3
"""Run an ONNX model with onnxruntime on one .npy input and save its first output as .npy.

Usage: ort_run.py MODEL.onnx INPUT.npy OUTPUT.npy
Used by the Rust tests to check that files we write are accepted by
onnxruntime and compute what tract computes.
"""
import sys

import numpy as np
import onnxruntime as ort


def main() -> int:
    model, inp, out = sys.argv[1:4]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    x = np.load(inp)
    (y, *_) = sess.run(None, {sess.get_inputs()[0].name: x})
    np.save(out, np.ascontiguousarray(y.astype(np.float32)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
