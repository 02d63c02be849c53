//! The fuzz seed corpora as ordinary tests: every file under
//! `fuzz/corpus/TARGET/` goes through the same entry point the cargo-fuzz
//! target calls (`fuzz/src/lib.rs`, included here), and none may panic.
//! `scripts/fuzz.sh TARGET SECONDS` runs the real fuzzer.

#[path = "../../fuzz/src/lib.rs"]
mod fuzz_targets;

use std::path::Path;

fn run_corpus(name: &str, entry: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            bytes.len() < 1 << 20,
            "{}: seeds stay under 1 MB",
            f.display()
        );
        let r = std::panic::catch_unwind(|| entry(&bytes));
        assert!(
            r.is_ok(),
            "fuzz target `{name}` panicked on {}",
            f.display()
        );
    }
    files.len()
}

#[test]
fn every_seed_of_every_fuzz_target_runs_without_a_panic() {
    for (name, entry) in fuzz_targets::TARGETS {
        let n = run_corpus(name, *entry);
        println!("{name}: {n} seed(s)");
        assert!(
            n >= 3,
            "fuzz/corpus/{name} holds {n} seed(s); expected at least 3"
        );
    }
}
