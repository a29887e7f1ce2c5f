//! `oxicorn_hello [oxicorn's flags]`: the hello-world `Router` of `hello.rs` (`GET /` answers
//! `hello from worker PID`) under oxicorn, configured from oxicorn's own command line
//! (`--bind`, `--workers`, ...): benches/app.sh's oxicorn side, against the same router under
//! `axum::serve` (benches/axum_standalone).

#[path = "../../axum_standalone/src/hello.rs"]
mod hello;

use std::process::ExitCode;

fn main() -> ExitCode {
    oxicorn::program!()
        .from_args()
        .app(|| async { Ok::<_, std::io::Error>(hello::router("hello")) })
        .run()
}
