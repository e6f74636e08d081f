//! Replays every checked-in seed and regression input through the fuzz entry points, so
//! the corpora run in every `cargo test` without libFuzzer.

use std::path::Path;

use super::TARGETS;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("readable seed");
            (e.path().display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, run) in TARGETS {
        let seeds = inputs(&root.join("seeds").join(name));
        assert!(!seeds.is_empty(), "target {name} has no seeds");
        let regressions = inputs(&root.join("regressions").join(name));
        for (path, bytes) in seeds.iter().chain(&regressions) {
            // A panic names the input, so a failing seed can be run on its own.
            eprintln!("replaying {path}");
            run(bytes);
        }
    }
}
