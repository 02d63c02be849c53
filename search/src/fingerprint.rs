//! The device fingerprint a search result is keyed by: CPU model, logical
//! CPUs, architecture, tract version and the evaluation thread count. A
//! result measured on another board, or with another thread count, is not
//! reused.

/// The fingerprint of this device for a search with `threads` threads.
pub fn fingerprint(threads: usize) -> String {
    format!("{} threads-{threads}", device())
}

/// CPU model, logical CPUs, architecture and tract version.
pub fn device() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| {
                    l.starts_with("model name")
                        || l.starts_with("Model")
                        || l.starts_with("Hardware")
                })
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown-cpu".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!(
        "{cpu} x{n} {} tract-{}",
        std::env::consts::ARCH,
        adaptivenet_onnx::TRACT_VERSION
    )
}
