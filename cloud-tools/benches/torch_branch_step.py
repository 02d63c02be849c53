#!/usr/bin/python3
"""PyTorch side of `bench-train`: rebuilds the branch `--input -> --output` of
an ONNX model (Conv, Relu, Clip with constant bounds, Add, Constant only) as
torch modules with the same weights, and times forward + backward + AdamW
steps on the given tensors. Prints one JSON line. Run with Debian's /usr/bin/python3 (python3-torch,
python3-onnx)."""
import argparse
import json
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m = onnx.load(a.model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    # nodes between input and output
    need, stack = [], [a.output]
    seen = set()
    while stack:
        t = stack.pop()
        if t == a.input or t in seen or t not in producer:
            continue
        seen.add(t)
        n = producer[t]
        if n not in need:
            need.append(n)
        stack.extend(n.input)
    order = [n for n in m.graph.node if n in need]
    params = torch.nn.ParameterDict()

    def p(name):
        key = name.replace(".", "_").replace("/", "_")
        if key not in params:
            params[key] = torch.nn.Parameter(torch.from_numpy(inits[name].copy()))
        return params[key]

    def attr(n, name, default):
        for at in n.attribute:
            if at.name == name:
                return list(at.ints) if at.ints else at.i
        return default

    def forward(x):
        env = {a.input: x}
        for n in order:
            ins = [env.get(i) for i in n.input]
            if n.op_type == "Conv":
                w = p(n.input[1])
                b = p(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                pads = attr(n, "pads", [0, 0, 0, 0])
                y = torch.nn.functional.conv2d(ins[0], w, b, stride=attr(n, "strides", [1, 1]),
                                               padding=(pads[0], pads[1]), groups=attr(n, "group", 1))
            elif n.op_type == "Relu":
                y = torch.relu(ins[0])
            elif n.op_type == "Clip":
                # opset 11+: bounds are (constant) inputs; ReLU6 in MobileNetV2
                lo = float(ins[1]) if len(ins) > 1 and ins[1] is not None else None
                hi = float(ins[2]) if len(ins) > 2 and ins[2] is not None else None
                if lo is not None and hi is not None:
                    y = torch.nn.functional.hardtanh(ins[0], lo, hi)
                else:
                    y = torch.clamp(ins[0], lo, hi)
            elif n.op_type == "Constant":
                value = next(at.t for at in n.attribute if at.name == "value")
                y = torch.from_numpy(numpy_helper.to_array(value).copy())
            elif n.op_type == "Add":
                y = ins[0] + ins[1]
            else:
                raise SystemExit(f"unsupported op {n.op_type} in node {n.name}")
            env[n.output[0]] = y
        return env[a.output]

    x = torch.from_numpy(np.load(a.x))
    y = torch.from_numpy(np.load(a.y))
    forward(x)  # creates parameters
    opt = torch.optim.AdamW(params.parameters(), lr=1e-3, weight_decay=0.0)

    def step():
        opt.zero_grad()
        loss = torch.mean((forward(x) - y) ** 2)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    # the median step: robust to other processes' bursts on a shared machine
    median = sorted(times)[len(times) // 2]
    print(json.dumps({"samples_per_s": x.shape[0] / median, "step_ms_median": 1000 * median,
                      "step_ms_mean": 1000 * sum(times) / len(times), "torch": torch.__version__,
                      "threads": a.threads}))


if __name__ == "__main__":
    main()
