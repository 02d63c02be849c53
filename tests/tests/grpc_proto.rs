//! The gRPC interface: the committed generated code is what
//! `daemon/proto/inference.proto` generates (`gen-grpc --check`), and every
//! message, field and method of that proto is the protocol's, as the stock
//! tritonclient wheel's descriptors define it
//! (`tests/scripts/check_grpc_proto.py`). Both need protoc
//! (`scripts/install-deps.sh` installs protobuf-compiler).

use std::process::Command;

use adaptivenet_testkit::prelude::*;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn the_committed_grpc_code_is_generated_from_the_committed_proto() {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_gen-grpc")).arg("--check"),
        "gen-grpc --check",
    );
    assert!(out.contains("up to date"), "{out}");
}

#[test]
fn the_proto_matches_the_protocol_as_the_stock_client_defines_it() {
    let out = run(
        Command::new("python3")
            .arg(repo().join("tests/scripts/check_grpc_proto.py"))
            .arg(repo().join("daemon/proto/inference.proto")),
        "check_grpc_proto.py",
    );
    println!("{out}");
    assert!(out.contains("check_grpc_proto: ok"), "{out}");
}
