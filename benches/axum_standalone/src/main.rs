//! `axum_standalone ADDR`: `GET /` answers `hello from worker PID` with the same handler as
//! examples/axum_app.rs, under `axum::serve` on a 2-thread tokio runtime (benches/app.sh's
//! reference for oxicorn).

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8100".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("axum_standalone: cannot bind {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        // examples/axum_app.rs's `GET /`, word for word.
        let greeting: Arc<str> = Arc::from("hello");
        let pid = std::process::id();
        let app = Router::new().route(
            "/",
            get(move || async move { format!("{greeting} from worker {pid}\n") }),
        );
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("axum_standalone: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
