//! Checks of the crate's layering, read from its source: the runtime never imports from
//! `tools/`, and no file imports one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, relative to `root`, without its tests module.
fn sources(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default().to_owned();
            out.insert(path.strip_prefix(root).unwrap_or(&path).to_path_buf(), code);
        }
    }
}

/// The file a module path (`["sinks", "kafka", "KafkaSink"]`) names: the longest prefix
/// that is a file or a folder's `mod.rs`.
fn file_of(files: &BTreeMap<PathBuf, String>, segments: &[&str]) -> Option<PathBuf> {
    (1..=segments.len()).rev().find_map(|n| {
        let base: PathBuf = segments[..n].iter().collect();
        [base.with_extension("rs"), base.join("mod.rs")].into_iter().find(|f| files.contains_key(f))
    })
}

/// The module path of a file (`sinks/kafka/mod.rs` → `["sinks", "kafka"]`).
fn module_of(file: &Path) -> Vec<String> {
    let mut segments: Vec<String> =
        file.iter().map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    segments
}

/// Each path a file names through `crate::` or `super::`, as module segments from the
/// crate root (a `use crate::a::{b, c::D}` group counts each of its members).
fn named_paths(file: &Path, code: &str) -> Vec<Vec<String>> {
    let module = module_of(file);
    let mut out = Vec::new();
    for prefix in ["crate::", "super::"] {
        for (at, _) in code.match_indices(prefix) {
            // `crate::` inside `$crate::`, a longer word or a longer path is not ours.
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || matches!(c, '_' | '$' | ':')) {
                continue;
            }
            let mut rest = &code[at..];
            let mut path = Vec::new();
            if prefix == "super::" {
                path = module.clone();
                while let Some(after) = rest.strip_prefix("super::") {
                    path.pop();
                    rest = after;
                }
            } else {
                rest = &rest[prefix.len()..];
            }
            let head: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            path.extend(head.split("::").filter(|s| !s.is_empty()).map(str::to_owned));
            if rest[head.len()..].starts_with('{') {
                let group = &rest[head.len() + 1..rest.find('}').unwrap_or(rest.len())];
                for member in group.split(',') {
                    let member = member.trim().trim_start_matches("self").trim_start_matches("::");
                    let mut full = path.clone();
                    full.extend(member.split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()));
                    out.push(full);
                }
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// file → the files it imports from (a folder's `mod.rs` declaring and re-exporting its
/// own children is not an import).
fn imports(files: &BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut graph = BTreeMap::new();
    for (file, code) in files {
        let own = module_of(file);
        let mut deps = BTreeSet::new();
        for path in named_paths(file, code) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(target) = file_of(files, &segments) else { continue };
            let child_of_own_folder = file.ends_with("mod.rs") && module_of(&target).starts_with(&own);
            if target != *file && !child_of_own_folder {
                deps.insert(target);
            }
        }
        graph.insert(file.clone(), deps);
    }
    graph
}

fn pipeline_files() -> BTreeMap<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = BTreeMap::new();
    sources(&root, &root, &mut files);
    // The library's files: not its root, not this check, not the command line (`cli/`,
    // the binary crate, which only uses the library).
    files.retain(|f, _| f != Path::new("lib.rs") && f != Path::new("layering.rs") && !f.starts_with("cli"));
    files
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let graph = imports(&pipeline_files());
    assert!(graph.len() > 30, "the pipeline's files were read: {}", graph.len());
    for start in graph.keys() {
        // A path back to `start` through the files it imports, if any.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((file, path)) = stack.pop() {
            for next in graph.get(&file).into_iter().flatten() {
                let mut longer = path.clone();
                longer.push(next.clone());
                assert!(
                    next != start,
                    "an import circle: {}",
                    longer.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" → ")
                );
                if seen.insert(next.clone()) {
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
}

#[test]
fn the_runtime_never_imports_from_the_tools() {
    let files = pipeline_files();
    let graph = imports(&files);
    for (file, deps) in &graph {
        if file.starts_with("tools") {
            continue;
        }
        let tools: Vec<_> = deps.iter().filter(|d| d.starts_with("tools")).collect();
        assert!(tools.is_empty(), "{} imports {tools:?}", file.display());
    }
    // The check sees imports at all: the bench imports the runtime's run.
    assert!(graph[Path::new("tools/bench.rs")].contains(Path::new("run/mod.rs")));
}

#[test]
fn a_circle_is_seen() {
    let files: BTreeMap<PathBuf, String> = [
        (PathBuf::from("a.rs"), "use crate::b::B;".to_owned()),
        (PathBuf::from("b/mod.rs"), "pub mod c;\npub use c::C;".to_owned()),
        (PathBuf::from("b/c.rs"), "use super::super::a::A;\nuse crate::{clock::now, b::B};".to_owned()),
        (PathBuf::from("clock.rs"), String::new()),
    ]
    .into_iter()
    .collect();
    let graph = imports(&files);
    assert_eq!(graph[Path::new("a.rs")], [PathBuf::from("b/mod.rs")].into());
    // A folder's mod.rs re-exporting its child does not import it.
    assert!(graph[Path::new("b/mod.rs")].is_empty());
    assert_eq!(
        graph[Path::new("b/c.rs")],
        [PathBuf::from("a.rs"), PathBuf::from("b/mod.rs"), PathBuf::from("clock.rs")].into()
    );
}
