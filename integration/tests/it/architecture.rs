//! The house rules of design.md "Architecture v3" that a machine can check: no import circle
//! between the top-level modules of any crate (a library, a binary's own modules, each binary
//! under `src/bin/`). A module imports what its `crate::` and `super::` paths name, in any form
//! rustfmt writes them (`use crate::{a, b::{C, D}}` over many lines, `super::super::x`, a name
//! the crate root re-exports), outside comments and test code (`#[cfg(test)]` items and
//! modules, `tests.rs` files).
//!
//! `T2T_ARCHITECTURE_ROOT=DIR` checks another checkout (the check was shown to find the
//! circles of commit 1185dde this way).

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

/// The name of the crate root in a graph.
const ROOT: &str = "(root)";

/// `text` without comments (`//` at a line's start or after a space; `"http://"` stays) and
/// without test code: a `#[cfg(test)]` item (to its `;` or the end of its braces).
fn code(text: &str) -> String {
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| {
            let mut cut = line.len();
            for (i, _) in line.match_indices("//") {
                if i == 0 || line[..i].ends_with(char::is_whitespace) {
                    cut = i;
                    break;
                }
            }
            &line[..cut]
        })
        .collect();
    let mut kept = String::new();
    let mut lines = uncommented.iter().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push_str(line);
            kept.push('\n');
            continue;
        }
        // Skip the item: to a line ending its braces, or a `;` outside braces.
        let mut depth = 0i64;
        for line in lines.by_ref() {
            depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
            let trimmed = line.trim_end();
            if depth <= 0 && (trimmed.ends_with(';') || trimmed.ends_with('}')) {
                break;
            }
        }
    }
    kept
}

/// The paths named in `code` after `prefix` (`crate::` or `super::`), as segment lists:
/// `crate::a::b` gives `[a, b]`, `crate::{a, b::{C, D}}` gives `[a]`, `[b, C]`, `[b, D]`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let preceded = code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        if !preceded {
            expand(&code[i + prefix.len()..], Vec::new(), &mut found);
        }
    }
    found
}

/// Push every path `text` starts with (a segment, `seg::more`, or a `{..}` group), each after
/// `base`.
fn expand(text: &str, base: Vec<String>, found: &mut Vec<Vec<String>>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 1;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    expand(&group[start..i], base.clone(), found);
                    start = i + 1;
                }
                _ => {}
            }
            if depth == 0 {
                expand(&group[start..i], base.clone(), found);
                return;
            }
        }
        return;
    }
    let segment: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if segment.is_empty() {
        if !base.is_empty() {
            found.push(base);
        }
        return;
    }
    let mut path = base;
    path.push(segment.clone());
    match text[segment.len()..].strip_prefix("::") {
        Some(more) => expand(more, path, found),
        None => found.push(path),
    }
}

/// The modules a root file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`), test-only
/// ones left out.
fn declared_modules(root: &str) -> BTreeSet<String> {
    code(root)
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line.split_once("mod ")?;
            let visibility = rest.0.trim();
            if !(visibility.is_empty() || visibility.starts_with("pub")) {
                return None;
            }
            let name = rest.1.strip_suffix(';')?.trim();
            Some(name.to_owned())
        })
        .collect()
}

/// What the root re-exports by name (`pub use module::...::Name;`), name to module.
fn root_exports(root: &str) -> BTreeMap<String, String> {
    let mut exports = BTreeMap::new();
    for statement in code(root).split(';') {
        let Some(used) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let mut paths = Vec::new();
        expand(used.trim_start_matches("crate::"), Vec::new(), &mut paths);
        for path in paths {
            if let (Some(first), Some(last)) = (path.first(), path.last()) {
                exports.insert(last.clone(), first.clone());
            }
        }
    }
    exports
}

/// Every `.rs` file under `dir`, `tests.rs` files left out.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
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

/// The module path of `file` relative to its crate's `src` (`a.rs`, `a/mod.rs`: `[a]`;
/// `a/b.rs`: `[a, b]`; the root file: `[]`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The graph of one crate rooted at `root_file`, whose modules are the files under `src` that
/// belong to `modules` (their first path segment).
fn crate_graph(
    src: &Path,
    root_file: &Path,
    files: &[PathBuf],
    modules: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    let root_text = std::fs::read_to_string(root_file).unwrap_or_default();
    let exports = root_exports(&root_text);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut test_modules = BTreeSet::new();
    for file in files {
        // `#[cfg(test)] mod x;` makes x.rs (and x/) test code.
        let text = std::fs::read_to_string(file).unwrap();
        let parent = file.parent().unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "#[cfg(test)]" {
                if let Some(name) = lines
                    .next()
                    .and_then(|l| l.trim().strip_prefix("mod "))
                    .and_then(|l| l.strip_suffix(';'))
                {
                    test_modules.insert(parent.join(name));
                }
            }
        }
    }
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let path = module_path(relative);
        let is_root = file == root_file;
        if !is_root && !path.first().is_some_and(|m| modules.contains(m)) {
            continue;
        }
        if test_modules
            .iter()
            .any(|t| file.with_extension("") == *t || file.starts_with(t))
        {
            continue;
        }
        let module = match (is_root, path.first()) {
            (false, Some(first)) => first.clone(),
            _ => ROOT.to_owned(),
        };
        let text = code(&std::fs::read_to_string(file).unwrap());
        let mut named = BTreeSet::new();
        for target in paths_after(&text, "crate::") {
            let first = &target[0];
            if modules.contains(first) {
                named.insert(first.clone());
            } else if let Some(owner) = exports.get(first) {
                named.insert(owner.clone());
            }
        }
        // `super::` from module path [a, b] (a/b.rs) is [a]; from [a] (a.rs, a/mod.rs) the root.
        for target in paths_after(&text, "super::") {
            let mut base = path.clone();
            base.pop();
            let mut rest = target.as_slice();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            let absolute: Vec<String> = base.into_iter().chain(rest.iter().cloned()).collect();
            if let Some(first) = absolute.first() {
                if modules.contains(first) {
                    named.insert(first.clone());
                }
            }
        }
        named.remove(&module);
        graph.entry(module).or_default().extend(named);
    }
    graph
}

/// Every crate of `krate` under `root`: its library, its binary's own modules, each binary
/// under `src/bin/`; by name.
fn graphs(root: &Path, krate: &str) -> Vec<(String, BTreeMap<String, BTreeSet<String>>)> {
    let src = root.join(krate).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let in_bin = |f: &PathBuf| f.strip_prefix(&src).unwrap().starts_with("bin");
    let (bins, main_files): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(in_bin);
    let mut crates = Vec::new();
    for (name, root_file) in [("lib", src.join("lib.rs")), ("main", src.join("main.rs"))] {
        if let Ok(text) = std::fs::read_to_string(&root_file) {
            let modules = declared_modules(&text);
            let graph = crate_graph(&src, &root_file, &main_files, &modules);
            crates.push((format!("{krate} ({name})"), graph));
        }
    }
    // Each binary of src/bin: a file, or a folder with main.rs.
    let bin_dir = src.join("bin");
    let mut bin_roots: BTreeSet<PathBuf> = BTreeSet::new();
    for file in &bins {
        let relative = file.strip_prefix(&bin_dir).unwrap();
        let first = bin_dir.join(relative.components().next().unwrap());
        bin_roots.insert(first);
    }
    for bin in bin_roots {
        let (bin_src, root_file) = if bin.is_dir() {
            (bin.clone(), bin.join("main.rs"))
        } else {
            (bin_dir.clone(), bin.clone())
        };
        let files: Vec<PathBuf> = bins
            .iter()
            .filter(|f| f.starts_with(&bin) || **f == bin)
            .cloned()
            .collect();
        let text = std::fs::read_to_string(&root_file).unwrap_or_default();
        let graph = crate_graph(&bin_src, &root_file, &files, &declared_modules(&text));
        crates.push((format!("{krate} (bin {})", bin.display()), graph));
    }
    crates
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
    let root = std::env::var_os("T2T_ARCHITECTURE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let mut circles = Vec::new();
    let mut modules = 0;
    for krate in CRATES {
        for (name, graph) in graphs(&root, krate) {
            modules += graph.len();
            for module in graph.keys() {
                if let Some(circle) = path(&graph, module, module) {
                    circles.push(format!("{name}: {}", circle.join(" -> ")));
                }
            }
        }
    }
    assert!(modules > 50, "only {modules} modules found under {root:?}");
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_check_reads_every_form_of_import_and_finds_a_circle() {
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
    let text = code(
        "use crate::{\n    b::{X, Y},\n    c,\n};\n// crate::d\nlet url = \"http://x\"; crate::e::f(); // crate::g\n\
         #[cfg(test)]\nuse crate::h;\n#[cfg(test)]\nmod tests {\n    use crate::i;\n}\nuse crate::j;\n",
    );
    let firsts: BTreeSet<String> = paths_after(&text, "crate::")
        .into_iter()
        .map(|p| p[0].clone())
        .collect();
    assert_eq!(
        firsts,
        ["b", "c", "e", "j"].map(String::from).into_iter().collect()
    );
    assert_eq!(
        paths_after("super::super::x::Y", "super::"),
        vec![["super", "x", "Y"].map(String::from).to_vec()]
    );
    assert_eq!(
        root_exports("pub use scheme::Scheme;\npub use a::{B, c::D};\n"),
        [("Scheme", "scheme"), ("B", "a"), ("D", "a")]
            .map(|(n, m)| (n.to_owned(), m.to_owned()))
            .into_iter()
            .collect()
    );
    assert_eq!(
        declared_modules("pub mod a;\nmod b;\npub(crate) mod c;\n#[cfg(test)]\nmod tests;\n"),
        ["a", "b", "c"].map(String::from).into_iter().collect()
    );
}
