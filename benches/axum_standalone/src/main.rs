//! `axum_standalone ADDR [THREADS]`: the hello-world `Router` of `hello.rs` (`GET /` answers
//! `hello from worker PID`), which `examples/axum_app.rs --hello-only` serves under oxicorn,
//! here under `axum::serve` on a tokio multi-thread runtime with THREADS worker threads
//! (default 2): benches/app.sh's reference for oxicorn. With 1 thread it is the counterpart of a single oxicorn worker, for telling the process model (two
//! single-threaded processes against one two-threaded one) from the per-request code.

mod hello;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8100".into());
    let threads = match args.next().map(|t| t.parse::<usize>()) {
        None => 2,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("axum_standalone: THREADS must be a number above 0");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
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
        // The same `Router` as oxicorn's side of the bench (`axum_app --hello-only`).
        let app = hello::router("hello");
        match axum::serve(listener, app).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("axum_standalone: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
