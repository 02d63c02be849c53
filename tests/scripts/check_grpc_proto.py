#!/usr/bin/env python3
"""Check daemon/proto/inference.proto against the protocol as the stock
Triton gRPC client knows it: every message, field (name, number, type,
label, message/enum type) and service method we define must be identical to
the descriptors shipped in the tritonclient wheel (service_pb2,
model_config_pb2), so a client built from the official protos talks to
adaptived unchanged. Needs protoc.

Usage: check_grpc_proto.py PATH/TO/inference.proto
Prints `check_grpc_proto: ok (N messages, M fields, K methods)`.
"""
import os
import subprocess
import sys
import tempfile
import warnings

from google.protobuf import descriptor_pb2, descriptor_pool
import tritonclient.grpc.model_config_pb2  # noqa: F401  (registers ModelConfig)
import tritonclient.grpc.service_pb2 as service_pb2


def fail(msg):
    print(f"check_grpc_proto: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    proto = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "set.pb")
        subprocess.run(["protoc", f"-I{os.path.dirname(proto)}", f"--descriptor_set_out={out}",
                        os.path.basename(proto)], check=True)
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    ours = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        ours.Add(fd)
    theirs = service_pb2.DESCRIPTOR.pool
    messages = fields = methods = 0
    seen = set()

    def compare(name):
        nonlocal messages, fields
        if name in seen:
            return
        seen.add(name)
        a = ours.FindMessageTypeByName(name)
        try:
            b = theirs.FindMessageTypeByName(name)
        except KeyError:
            fail(f"message {name} is not in the protocol")
        messages += 1
        for fa in a.fields:
            fb = b.fields_by_name.get(fa.name)
            if fb is None:
                fail(f"{name}.{fa.name}: no such field in the protocol")
            for attr in ("number", "type", "label"):
                if getattr(fa, attr) != getattr(fb, attr):
                    fail(f"{name}.{fa.name}: {attr} {getattr(fa, attr)} != {getattr(fb, attr)}")
            for kind in ("message_type", "enum_type"):
                ta, tb = getattr(fa, kind), getattr(fb, kind)
                if (ta and ta.full_name) != (tb and tb.full_name):
                    fail(f"{name}.{fa.name}: {kind} {ta and ta.full_name} != {tb and tb.full_name}")
            if fa.message_type and not fa.message_type.GetOptions().map_entry:
                compare(fa.message_type.full_name)
            if fa.enum_type:
                va = {v.name: v.number for v in fa.enum_type.values}
                vb = {v.name: v.number for v in fb.enum_type.values}
                for k, n in va.items():
                    if vb.get(k) != n:
                        fail(f"enum {fa.enum_type.full_name}.{k} = {n}, protocol: {vb.get(k)}")
            fields += 1
        for n in a.nested_types:
            if not n.GetOptions().map_entry:
                compare(n.full_name)

    for fd in fds.file:
        for svc in fd.service:
            sb = theirs.FindServiceByName(f"{fd.package}.{svc.name}")
            for m in svc.method:
                mb = sb.methods_by_name.get(m.name)
                if mb is None:
                    fail(f"rpc {m.name} is not in the protocol")
                if m.input_type.lstrip(".") != mb.input_type.full_name or \
                        m.output_type.lstrip(".") != mb.output_type.full_name:
                    fail(f"rpc {m.name}: types differ from the protocol")
                methods += 1
        for msg in fd.message_type:
            compare(f"{fd.package}.{msg.name}")
    print(f"check_grpc_proto: ok ({messages} messages, {fields} fields, {methods} methods)")


if __name__ == "__main__":
    main()
