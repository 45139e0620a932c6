//! The house rules of design.md "Architecture v3" that a machine can check: no import circle
//! between the top-level modules of any crate. A module's imports are the `crate::NAME` paths
//! in its files outside comments and `#[cfg(test)]` code (`tests.rs` files are test code).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crates whose modules are checked.
const CRATES: &[&str] = &[
    "proto",
    "wallet",
    "hw",
    "ln",
    "regtest",
    "socket-node",
    "cable-node",
    "integration",
];

/// Every `.rs` file under `dir`, `tests.rs` files left out.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            found.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in `text`, outside comments and test code.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let group = rest
                .strip_prefix('{')
                .map(|g| g.split('}').next().unwrap_or_default());
            let paths: Vec<&str> = match group {
                Some(group) => group.split(',').collect(),
                None => vec![rest],
            };
            for path in paths {
                let name: String = path
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// The import graph of `krate`'s top-level modules (`main.rs`, `lib.rs` and `bin/` are the root).
fn graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(krate)
        .join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_owned();
        let module = match module.as_str() {
            "main" | "lib" | "bin" => "(root)".to_owned(),
            _ => module,
        };
        let mut named = imports(&std::fs::read_to_string(&file).unwrap());
        named.remove(&module);
        graph.entry(module).or_default().extend(named);
    }
    graph
}

/// A path `from` -> ... -> `to` in `graph`, if any.
fn path(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_owned()]];
    while let Some(trail) = stack.pop() {
        let last = trail.last().unwrap();
        if last == to && trail.len() > 1 {
            return Some(trail);
        }
        for next in graph.get(last).into_iter().flatten() {
            if (next == to || seen.insert(next.clone())) && graph.contains_key(next) {
                let mut longer = trail.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_circle_between_its_modules() {
    let mut circles = Vec::new();
    for krate in CRATES {
        let graph = graph(krate);
        for module in graph.keys() {
            if let Some(circle) = path(&graph, module, module) {
                circles.push(format!("{krate}: {}", circle.join(" -> ")));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_check_finds_a_circle() {
    let mut graph = BTreeMap::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")] {
        graph
            .entry(from.to_owned())
            .or_insert_with(BTreeSet::new)
            .insert(to.to_owned());
    }
    graph.insert("e".to_owned(), BTreeSet::new());
    assert_eq!(
        path(&graph, "a", "a").unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
    assert_eq!(path(&graph, "d", "d"), None);
    assert_eq!(
        imports("use crate::{b::X, c};\n// crate::d\nlet x = crate::e::f(); // crate::g"),
        ["b", "c", "e"].map(String::from).into_iter().collect()
    );
}
