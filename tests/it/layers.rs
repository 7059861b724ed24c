//! The house rule: layers point down, never up. Each top-level module may
//! use only the modules listed for it here (the same table is in
//! docs/ARCHITECTURE.md); a `use crate::…` (or `super::…` up to the crate
//! root) outside a `#[cfg(test)] mod tests` block that is not listed fails.
//! SQL runs only in `store`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module → the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "app", "channel", "desk", "http", "metrics", "outbound", "pipeline", "store", "config",
            "net", "mail", "crypto", "retry",
        ],
    ),
    (
        "app",
        &[
            "channel", "desk", "http", "metrics", "outbound", "pipeline", "store", "config", "net",
            "mail", "crypto", "retry",
        ],
    ),
    (
        "channel",
        &[
            "pipeline", "store", "config", "net", "mail", "crypto", "retry",
        ],
    ),
    (
        "http",
        &[
            "desk", "outbound", "pipeline", "store", "config", "mail", "crypto", "retry",
        ],
    ),
    (
        "desk",
        &[
            "outbound", "store", "config", "net", "mail", "crypto", "retry",
        ],
    ),
    ("metrics", &["store", "config"]),
    (
        "outbound",
        &["store", "config", "net", "mail", "crypto", "retry"],
    ),
    ("pipeline", &["store", "config", "mail", "crypto", "retry"]),
    ("store", &["config", "net", "mail", "crypto", "retry"]),
    ("net", &["config", "crypto", "retry"]),
    ("config", &["mail"]),
    ("mail", &["crypto"]),
    ("crypto", &[]),
    ("retry", &[]),
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `src/a/b.rs` and `src/a/b/mod.rs` → [a, b].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code outside the unit-test block (test code may use anything).
fn non_test_code(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segments of the items in a `{…}` group at `text` (after `{`).
fn group_heads(text: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut item_start) = (0, true);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && (c.is_ascii_alphabetic() || c == '_') && depth == 0 => {
                heads.push(identifier(&text[i..]).to_string());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The crate's top-level modules that `code` (in module `path`) refers to.
fn uses(path: &[String], code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_heads(group)),
            None => {
                found.insert(identifier(rest).to_string());
            }
        }
    }
    // `super::` chains that climb to the crate root name a top module.
    for (at, _) in code.match_indices("super::") {
        let before = &code[..at];
        if before.ends_with("super::")
            || before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let mut chain = &code[at..];
        let mut climbs = 0;
        while let Some(next) = chain.strip_prefix("super::") {
            climbs += 1;
            chain = next;
        }
        if climbs == path.len() {
            found.insert(identifier(chain).to_string());
        }
    }
    found
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen_tops = BTreeSet::new();
    for file in &files {
        let path = module_path(&src, file);
        let top = path[0].as_str();
        if top == "lib" || top == "main" {
            continue;
        }
        seen_tops.insert(top.to_string());
        let Some(permitted) = allowed.get(top) else {
            wrong.push(format!(
                "{top}: a module the layer table does not know; add it"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in uses(&path, non_test_code(&text)) {
            if used != top
                && allowed.contains_key(used.as_str())
                && !permitted.contains(&used.as_str())
            {
                wrong.push(format!(
                    "{}: uses {used}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(seen_tops.len() >= 10, "found only {seen_tops:?}");
    assert!(wrong.is_empty(), "layer rule broken:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_store_runs_sql() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("store")))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            ["sqlx::query", "query_as", "query_scalar", "sqlx::raw_sql"]
                .iter()
                .any(|q| non_test_code(&text).contains(q))
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    assert!(outside.is_empty(), "SQL outside src/store: {outside:?}");
}

#[test]
fn the_checker_sees_an_upward_use() {
    // The rule must be able to fail: a store file using the pipeline.
    let path = vec!["store".to_string(), "tickets".to_string()];
    let found = uses(
        &path,
        "use crate::{config::Config, pipeline::Outcome};\nuse super::super::http;",
    );
    assert!(found.contains("pipeline") && found.contains("config") && found.contains("http"));
    assert!(!found.contains("Outcome"));
}
