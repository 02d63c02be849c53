#!/usr/bin/env python3
"""Drive a running adaptived with the stock Triton HTTP client
(`tritonclient[http]`, default settings) and with the Open Inference
Protocol's own request examples (JSON, nested data, binary tensor data),
then print `triton_client: ok` and a summary line.

Usage: triton_client.py HOST:PORT MODEL

Exits non-zero with a message on the first failed check. Run by
daemon/tests/kserve.rs against a real daemon.
"""
import gzip
import json
import struct
import sys
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient

TOL = 1e-5


def fail(msg):
    print(f"triton_client: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def split_binary(headers, body):
    """The JSON part and the binary part of a binary-extension answer."""
    # HTTP header names are case-insensitive (hyper sends them lower-case).
    n = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
    if n is None:
        return json.loads(body), b""
    n = int(n)
    return json.loads(body[:n]), body[n:]


def main():
    url, model = sys.argv[1], sys.argv[2]
    base = f"http://{url}"
    client = httpclient.InferenceServerClient(url=url)  # defaults
    check(client.is_server_live(), "server not live")
    check(client.is_model_ready(model), "model not ready")
    meta = client.get_model_metadata(model)
    inp = meta["inputs"][0]
    name, item = inp["name"], inp["shape"][1:]
    labels = meta["parameters"]["labels"]

    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, *item)).astype(np.float32)

    # 1. infer with the defaults: binary tensor data both ways.
    i_bin = httpclient.InferInput(name, list(x.shape), "FP32")
    i_bin.set_data_from_numpy(x)  # binary_data=True by default
    r = client.infer(model, [i_bin])
    logits_bin = r.as_numpy("logits")
    check(logits_bin is not None and logits_bin.shape == (3, 10),
          f"binary logits shape {None if logits_bin is None else logits_bin.shape}")
    out = r.get_output("logits")
    check("binary_data_size" in out.get("parameters", {}),
          f"default infer did not get binary output: {out}")

    # 2. the same with JSON both ways: the logits agree within 1e-5.
    i_json = httpclient.InferInput(name, list(x.shape), "FP32")
    i_json.set_data_from_numpy(x, binary_data=False)
    o_json = httpclient.InferRequestedOutput("logits", binary_data=False)
    r = client.infer(model, [i_json], outputs=[o_json])
    logits_json = r.as_numpy("logits")
    diff = float(np.max(np.abs(logits_json - logits_bin)))
    check(diff <= TOL, f"binary and JSON logits differ by {diff}")

    # 3. async_infer (default binary data) on a few requests at once.
    futures = [client.async_infer(model, [i_bin]) for _ in range(4)]
    for f in futures:
        d = float(np.max(np.abs(f.get_result().as_numpy("logits") - logits_bin)))
        check(d <= TOL, f"async_infer logits differ by {d}")

    # 4. compressed request and answer.
    r = client.infer(model, [i_bin], request_compression_algorithm="gzip",
                     response_compression_algorithm="gzip")
    d = float(np.max(np.abs(r.as_numpy("logits") - logits_bin)))
    check(d <= TOL, f"gzip logits differ by {d}")
    r = client.infer(model, [i_bin], request_compression_algorithm="deflate",
                     response_compression_algorithm="deflate")
    d = float(np.max(np.abs(r.as_numpy("logits") - logits_bin)))
    check(d <= TOL, f"deflate logits differ by {d}")

    # 5. classification: class_count=3 gives "score:index:label", best first.
    o_cls = httpclient.InferRequestedOutput("logits", class_count=3)
    r = client.infer(model, [i_bin], outputs=[o_cls])
    cls = r.as_numpy("logits")
    check(cls.shape == (3, 3), f"classification shape {cls.shape}")
    for row, lg in zip(cls, logits_bin):
        score, idx, label = row[0].decode().split(":", 2)
        check(int(idx) == int(np.argmax(lg)), f"top class {idx} != argmax {np.argmax(lg)}")
        check(abs(float(score) - float(lg[int(idx)])) <= TOL, f"score {score}")
        check(label == labels[int(idx)], f"label {label} != {labels[int(idx)]}")

    # 6. statistics and config.
    stats = client.get_inference_statistics(model)
    s = stats["model_stats"][0]
    check(s["name"] == model, f"stats for {s['name']}")
    succ = s["inference_stats"]["success"]["count"]
    check(succ >= 8, f"success count {succ} after 8 requests")
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        check(s["inference_stats"][k]["count"] == succ and s["inference_stats"][k]["ns"] > 0,
              f"stats {k}: {s['inference_stats'][k]}")
    check(s["inference_stats"]["compute_infer"]["ns"] > 0, "compute_infer ns")
    cfg = client.get_model_config(model)
    check(cfg["name"] == model and cfg["max_batch_size"] > 0, f"config {cfg}")
    check(cfg["input"][0]["name"] == name and cfg["input"][0]["data_type"] == "TYPE_FP32",
          f"config input {cfg['input']}")
    check(cfg["input"][0]["dims"] == item, f"config dims {cfg['input'][0]['dims']} != {item}")
    check(cfg["output"][0]["dims"] == [10], f"config output {cfg['output']}")

    # 7. The protocol's own examples, adapted to this model's input.
    infer_url = f"{base}/v2/models/{model}/infer"
    # 7a. JSON request with an id and a named output; nested `data`.
    req = {"id": "42",
           "inputs": [{"name": name, "shape": list(x[:1].shape), "datatype": "FP32",
                       "data": x[:1].tolist()}],
           "outputs": [{"name": "logits"}]}
    st, h, body = post(infer_url, json.dumps(req).encode(), {"Content-Type": "application/json"})
    check(st == 200, f"JSON example: {st} {body[:200]}")
    ans = json.loads(body)
    check(ans["id"] == "42" and ans["model_name"] == model, f"JSON example answer {ans}")
    check(ans["outputs"][0]["datatype"] == "FP32" and ans["outputs"][0]["shape"] == [1, 10],
          f"JSON example output {ans['outputs'][0]}")
    d = float(np.max(np.abs(np.array(ans["outputs"][0]["data"]) - logits_bin[0])))
    check(d <= TOL, f"JSON example logits differ by {d}")
    # 7b. Binary example: input as binary data; one output binary, the
    # other (classification) as JSON.
    raw = x[:2].tobytes()  # little-endian FP32
    head = json.dumps({
        "model_name": model,
        "inputs": [{"name": name, "shape": list(x[:2].shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                    {"name": "logits", "parameters": {"class_count": 1}}],
    }).encode()
    st, h, body = post(infer_url, head + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head))})
    check(st == 200, f"binary example: {st} {body[:200]}")
    ans, tail = split_binary(h, body)
    o0, o1 = ans["outputs"]
    check(o0["parameters"]["binary_data_size"] == 2 * 10 * 4 and len(tail) == 80,
          f"binary example output {o0}, {len(tail)} bytes")
    got = np.frombuffer(tail, dtype="<f4").reshape(2, 10)
    d = float(np.max(np.abs(got - logits_bin[:2])))
    check(d <= TOL, f"binary example logits differ by {d}")
    check(o1["datatype"] == "BYTES" and len(o1["data"]) == 2, f"classification output {o1}")
    # 7c. binary_data_output: every output binary; BYTES as length + bytes.
    head = json.dumps({
        "inputs": [{"name": name, "shape": list(x[:1].shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x[:1].nbytes}}],
        "outputs": [{"name": "logits", "parameters": {"class_count": 2}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    st, h, body = post(infer_url, gzip.compress(head + x[:1].tobytes()), {
        "Content-Encoding": "gzip",
        "Inference-Header-Content-Length": str(len(head))})
    check(st == 200, f"binary_data_output example: {st} {body[:200]}")
    ans, tail = split_binary(h, body)
    n = struct.unpack("<I", tail[:4])[0]
    first = tail[4:4 + n].decode()
    check(int(first.split(":")[1]) == int(np.argmax(logits_bin[0])), f"binary BYTES {first}")
    # 7d. Errors name the problem.
    bad = [
        (head + b"\0" * 3, str(len(head)), "binary_data_size"),
        (head, str(len(head) + 10), "past the end"),
        (b'{"inputs":[{"name":"%s","shape":[1],"datatype":"FP64","data":[1]}]}' % name.encode(),
         None, "FP64"),
    ]
    for payload, hl, needle in bad:
        hdr = {"Content-Type": "application/octet-stream"}
        if hl is not None:
            hdr["Inference-Header-Content-Length"] = hl
        st, _, body = post(infer_url, payload, hdr)
        check(st == 400 and needle in body.decode(), f"bad request gave {st} {body[:300]!r}")

    # 8. load/unload are refused with a reason; /v2 does not advertise them.
    exts = client.get_server_metadata()["extensions"]
    check("model_repository" not in exts, f"extensions {exts}")
    try:
        client.unload_model(model)
        fail("unload_model succeeded")
    except Exception as e:  # tritonclient raises InferenceServerException
        check("bundle_dir" in str(e), f"unload error {e}")

    print(f"triton_client: ok (max |binary - JSON| = {diff:.2e}, {succ} successes in stats)")


if __name__ == "__main__":
    main()
