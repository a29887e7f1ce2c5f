//! The layering that keeps the tree from rotting (issue 8): what runs in a forked child never
//! reaches into the arbiter, and the bus knows no service and no worker. Each rule is read
//! from the sources, so a stray `use crate::arbiter::...` fails here rather than in review.
//!
//! | module                 | may not use                      | why |
//! |------------------------|----------------------------------|-----|
//! | `worker/`, `service/`  | `arbiter`                        | they run after the fork; the arbiter's state is not theirs |
//! | `bus/`                 | `arbiter`, `service`, `worker`   | the bus carries opaque bytes for any service, in any child |
//! | `child.rs`             | `arbiter`, `worker`, `bus`, `service` | both kinds of child build on it |
//! | `net/`                 | `arbiter`, `worker`, `service`, `bus` | addresses and streams sit below everything |

use std::path::{Path, PathBuf};

/// Every `.rs` file under `path` (or `path` itself).
fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The lines of `file` that name `crate::<module>` in code (comments and doc comments, which
/// may link anywhere, are not uses).
fn uses(file: &Path, module: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let needle = format!("crate::{module}");
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or("");
            code.contains(&needle)
                && code[code.find(&needle).unwrap() + needle.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
        .map(|(n, l)| format!("{}:{}: {}", file.display(), n + 1, l.trim()))
        .collect()
}

#[test]
fn children_and_the_bus_do_not_reach_upward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: &[(&str, &[&str])] = &[
        ("worker", &["arbiter"]),
        ("service", &["arbiter"]),
        ("bus", &["arbiter", "service", "worker"]),
        ("child.rs", &["arbiter", "worker", "bus", "service"]),
        ("net", &["arbiter", "worker", "service", "bus"]),
    ];
    let mut broken = Vec::new();
    for (dir, forbidden) in rules {
        let files = sources(&src.join(dir));
        assert!(!files.is_empty(), "no sources under src/{dir}");
        for file in files {
            for module in *forbidden {
                broken.extend(uses(&file, module));
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_sees_a_use() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.rs");
    std::fs::write(
        &f,
        "use crate::arbiter::signals;\n/// [`crate::arbiter`] in a doc\nlet a = crate::arbitrary;\n",
    )
    .unwrap();
    assert_eq!(uses(&f, "arbiter").len(), 1);
}
