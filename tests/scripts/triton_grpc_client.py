#!/usr/bin/env python3
"""Drive a running adaptived's gRPC endpoint with the stock Triton gRPC
client (`tritonclient[grpc]`, default settings), then print
`triton_grpc_client: ok` and a summary line.

Usage: triton_grpc_client.py GRPC_HOST:PORT HTTP_HOST:PORT MODEL

The logits are compared with the HTTP endpoint's for the same input (the
same model must answer both). Exits non-zero on the first failed check.
Run by daemon/tests/kserve.rs against a real daemon.
"""
import json
import time
import sys
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

TOL = 1e-5


def fail(msg):
    print(f"triton_grpc_client: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def http_logits(http, model, name, x):
    req = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                       "data": x.flatten().tolist()}]}
    r = urllib.request.Request(f"http://{http}/v2/models/{model}/infer",
                               data=json.dumps(req).encode(),
                               headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=60) as resp:
        out = json.loads(resp.read())["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def main():
    url, http, model = sys.argv[1], sys.argv[2], sys.argv[3]
    client = grpcclient.InferenceServerClient(url=url)  # defaults
    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    check(client.is_model_ready(model), "model not ready")
    check(not client.is_model_ready("no-such-model"), "an unknown model is ready")
    meta = client.get_model_metadata(model, as_json=True)
    inp = meta["inputs"][0]
    name, item = inp["name"], [int(d) for d in inp["shape"][1:]]
    check(meta["outputs"][0]["name"] == "logits", f"outputs {meta['outputs']}")
    smeta = client.get_server_metadata(as_json=True)
    check(smeta["name"] == "adaptived", f"server metadata {smeta}")

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, *item)).astype(np.float32)
    want = http_logits(http, model, name, x)

    # 1. infer with the defaults (raw_input_contents both ways).
    i = grpcclient.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    r = client.infer(model, [i], request_id="7")
    got = r.as_numpy("logits")
    check(got is not None and got.shape == (3, 10), f"logits shape {None if got is None else got.shape}")
    diff = float(np.max(np.abs(got - want)))
    check(diff <= TOL, f"gRPC and HTTP logits differ by {diff}")
    check(r.get_response().id == "7", f"id {r.get_response().id!r}")

    # 2. async_infer, several at once.
    results = []
    for _ in range(4):
        client.async_infer(model, [i], callback=lambda result, error: results.append((result, error)))
    deadline = time.monotonic() + 60
    while len(results) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    check(len(results) == 4, f"{len(results)} of 4 async answers")
    for res, err in results:
        check(err is None, f"async_infer error {err}")
        d = float(np.max(np.abs(res.as_numpy("logits") - want)))
        check(d <= TOL, f"async_infer logits differ by {d}")

    # 3. classification: "score:index:label", best first.
    o = grpcclient.InferRequestedOutput("logits", class_count=3)
    r = client.infer(model, [i], outputs=[o])
    cls = r.as_numpy("logits")
    check(cls.shape == (3, 3), f"classification shape {cls.shape}")
    for row, lg in zip(cls, want):
        score, idx, _label = row[0].decode().split(":", 2)
        check(int(idx) == int(np.argmax(lg)), f"top class {idx} != argmax {np.argmax(lg)}")
        check(abs(float(score) - float(lg[int(idx)])) <= 1e-4, f"score {score}")

    # 4. statistics and config.
    stats = client.get_inference_statistics(model, as_json=True)
    s = stats["model_stats"][0]
    succ = int(s["inference_stats"]["success"]["count"])
    check(succ >= 6, f"success count {succ} after 6 gRPC requests")
    check(int(s["inference_stats"]["compute_infer"]["ns"]) > 0, f"stats {s}")
    cfg = client.get_model_config(model, as_json=True)["config"]
    check(cfg["name"] == model and int(cfg["max_batch_size"]) > 0, f"config {cfg}")
    check(cfg["input"][0]["name"] == name and cfg["input"][0]["data_type"] == "TYPE_FP32",
          f"config input {cfg['input']}")
    check([int(d) for d in cfg["input"][0]["dims"]] == item, f"config dims {cfg['input'][0]['dims']}")

    # 5. errors name the problem, with gRPC status codes.
    bad = grpcclient.InferInput(name, [1, 5], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 5), np.float32))
    try:
        client.infer(model, [bad])
        fail("a wrong shape was accepted")
    except InferenceServerException as e:
        check("INVALID_ARGUMENT" in str(e.status()) and "shape" in e.message(), f"bad shape: {e}")
    try:
        client.infer("no-such-model", [i])
        fail("an unknown model answered")
    except InferenceServerException as e:
        check("NOT_FOUND" in str(e.status()), f"unknown model: {e}")

    print(f"triton_grpc_client: ok (max |gRPC - HTTP| = {diff:.2e}, {succ} successes in stats)")


if __name__ == "__main__":
    main()
