//! The hello-world axum `Router` benches/app.sh measures, shared word for word by both sides
//! of the comparison: benches/axum_standalone serves it under `axum::serve`, and
//! examples/axum_app.rs serves it under oxicorn (its whole router with this `GET /`, or this
//! router alone with `--hello-only`, which is what the bench runs). One file, included by
//! path by both, so neither side can drift from the other.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

/// `GET /` answers `GREETING from worker PID` (the pid read here: call it in the process
/// that serves, after any fork). Bound to its (empty) state, as `axum::serve` does and
/// oxicorn's README asks.
pub fn router(greeting: &str) -> Router {
    // An `Arc`: axum clones the handler for each request, and a `String` would be copied.
    let greeting: Arc<str> = Arc::from(greeting);
    let pid = std::process::id();
    Router::new()
        .route(
            "/",
            get(move || async move { format!("{greeting} from worker {pid}\n") }),
        )
        .with_state(())
}
