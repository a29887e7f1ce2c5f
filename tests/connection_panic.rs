//! A panic while serving one connection ends that connection only: the worker's accept loop
//! goes on, and the connection slot is given back.

use std::sync::Arc;
use std::time::Duration;

use oxicorn::net::Stream;
use oxicorn::scoreboard::Scoreboard;
use oxicorn::service::{ConnContext, Serve};
use oxicorn::worker::accept::{AcceptSocket, Acceptor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Echoes one byte, or panics when that byte is `!`.
struct Touchy;

impl Serve for Touchy {
    async fn serve(&self, mut stream: Stream, _ctx: ConnContext) {
        let mut b = [0u8; 1];
        if stream.read_exact(&mut b).await.is_err() {
            return;
        }
        if b[0] == b'!' {
            panic!("a bug in one connection's handling");
        }
        let _ = stream.write_all(&b).await;
    }
}

#[test]
fn a_panic_ends_only_its_connection() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slot = Scoreboard::create().unwrap().slot(0);
        let stop = CancellationToken::new();
        let acceptor = Acceptor {
            listeners: vec![AcceptSocket::Tcp(listener)],
            // One slot: if the panicking connection kept its permit, nobody else would be served.
            limit: Arc::new(tokio::sync::Semaphore::new(1)),
            conns: TaskTracker::new(),
            stop: stop.clone(),
            service: Arc::new(Touchy),
            slot,
            idle_timeout: None,
            reclaim: Default::default(),
            targets: Default::default(),
            yield_permit: Default::default(),
        };
        let accept_loop = tokio::spawn(acceptor.run());
        let deadline = Duration::from_secs(5);

        for round in 0..3 {
            let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
            bad.write_all(b"!").await.unwrap();
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(deadline, bad.read(&mut buf))
                .await
                .unwrap();
            assert!(
                matches!(n, Ok(0) | Err(_)),
                "round {round}: the panicking connection is closed"
            );

            let mut good = tokio::net::TcpStream::connect(addr).await.unwrap();
            good.write_all(b"a").await.unwrap();
            tokio::time::timeout(deadline, good.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"a", "round {round}: others are still served");
        }
        assert_eq!(
            slot.active_conns.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        stop.cancel();
        accept_loop.await.unwrap();
    });
}
