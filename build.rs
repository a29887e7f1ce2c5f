//! Records the commit this binary was built from, for `oxicorn --version` and the binary
//! upgrade's log line (which names the old and the new build): `git rev-parse --short HEAD`
//! when the source is a git checkout with git installed, else "unknown" (a crates.io build,
//! a tarball).

fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=OXICORN_COMMIT={commit}");
    // Rebuild when HEAD moves (a commit rewrites the index, a checkout HEAD). Asked of git
    // because in a worktree `.git` is a file pointing elsewhere.
    for name in ["HEAD", "index"] {
        if let Some(path) = std::process::Command::new("git")
            .args(["rev-parse", "--git-path", name])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|p| std::path::Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
