//! The fuzz targets' corpus and every crash they found, replayed through the parsers
//! (`defectflow::tools::fuzzing`, the targets' own bodies) on the stable toolchain.

use std::path::Path;

fn inputs(folder: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("input")))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_corpus_input_and_past_crash_goes_through_its_parser() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, check) in defectflow::tools::fuzzing::TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(target));
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
        for (name, bytes) in corpus.iter().chain(&inputs(&fuzz.join("regressions").join(target))) {
            let outcome = std::panic::catch_unwind(|| check(bytes));
            assert!(outcome.is_ok(), "{target}: {name} breaks the parser");
        }
    }
}
