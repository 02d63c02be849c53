//! `systemd/adaptived.service` passes `systemd-analyze verify` (through
//! `systemd/verify.sh`, which also prints `systemd-analyze security`).

use std::path::Path;
use std::process::Command;

#[test]
fn the_unit_file_verifies_and_its_exposure_is_low() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("systemd/verify.sh"))
        .arg(env!("CARGO_BIN_EXE_adaptived"))
        .output()
        .expect("run systemd/verify.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd/verify.sh failed (scripts/install-deps.sh installs systemd-analyze):\n{text}"
    );
    let score = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no security score:\n{text}"));
    println!("{score}");
    let value: f64 = score
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(value <= 2.0, "{score}");
}
