//! Load generator for the chat and quote benchmarks (`benches/chat/run.sh` drives it).
//!
//! ```sh
//! cargo run --release --example chat_load -- chat 127.0.0.1:7000 [CLIENTS] [SENDERS] [LINES] [WINDOW]
//! cargo run --release --example chat_load -- quote 127.0.0.1:7001 [CONCURRENCY] [SECONDS]
//! ```
//!
//! `chat`: CLIENTS members join (any server that prompts for a name on connect and confirms
//! with one line: oxicorn's chat and the classic Twisted `LineReceiver` chat both do), then
//! SENDERS of them each send LINES lines, `<sender> <seq> <micros>`. A sender keeps at most
//! WINDOW of its lines in flight to its slowest receiver, so the measurement is the server's
//! throughput, not how deep it lets queues grow. Prints delivered lines/s, p50/p99 delivery
//! latency, lost and out-of-order lines, one `key=value` per line.
//!
//! `quote`: CONCURRENCY loops of connect, send a line, read the reply, close, for SECONDS;
//! prints connections/s.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::LocalSet;

fn arg(args: &[String], i: usize, default: usize) -> usize {
    args.get(i)
        .map(|s| s.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("chat");
    let addr: SocketAddr = args
        .get(1)
        .map(|s| s.parse().expect("ADDR as 127.0.0.1:7000"))
        .unwrap_or_else(|| "127.0.0.1:7000".parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = LocalSet::new();
    match mode {
        "chat" => local.block_on(
            &rt,
            chat(
                addr,
                arg(&args, 2, 200),
                arg(&args, 3, 20),
                arg(&args, 4, 2000),
                arg(&args, 5, 40),
            ),
        ),
        "quote" => local.block_on(&rt, quote(addr, arg(&args, 2, 50), arg(&args, 3, 5))),
        other => panic!("unknown mode {other}: chat or quote"),
    }
}

/// What the receivers record, shared by every task of this single thread.
struct Tally {
    clients: usize,
    senders: usize,
    /// `got[r * senders + s]`: lines from sender `s` received by client `r`.
    got: Vec<Cell<u64>>,
    received: Cell<u64>,
    out_of_order: Cell<u64>,
    latencies_us: RefCell<Vec<u32>>,
    last_receive: Cell<Option<Instant>>,
}

async fn chat(addr: SocketAddr, clients: usize, senders: usize, lines: usize, window: usize) {
    let start = Instant::now();
    let tally = Rc::new(Tally {
        clients,
        senders,
        got: (0..clients * senders).map(|_| Cell::new(0)).collect(),
        received: Cell::new(0),
        out_of_order: Cell::new(0),
        latencies_us: RefCell::new(Vec::with_capacity(senders * lines * clients)),
        last_receive: Cell::new(None),
    });

    // Join everybody first.
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..clients {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let mut line = Vec::new();
        rd.read_until(b'\n', &mut line).await.expect("prompt");
        wr.write_all(format!("c{i}\r\n").as_bytes()).await.unwrap();
        line.clear();
        rd.read_until(b'\n', &mut line).await.expect("joined");
        writers.push(wr);
        readers.push(rd);
    }
    // Let the join notices drain before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (r, mut rd) in readers.into_iter().enumerate() {
        let tally = Rc::clone(&tally);
        tasks.push(tokio::task::spawn_local(async move {
            let mut line = Vec::with_capacity(128);
            loop {
                line.clear();
                match rd.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                // `<cN> S K T`: parsed from the bytes, so the generator spends as little
                // of the shared CPUs as it can.
                if line.first() != Some(&b'<') {
                    continue;
                }
                let mut f = line
                    .split(|b| *b == b' ' || *b == b'\r' || *b == b'\n')
                    .filter(|w| !w.is_empty())
                    .skip(1)
                    .map(number);
                let (Some(s), Some(k), Some(t)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let s = s as usize;
                let slot = &tally.got[r * tally.senders + s];
                if slot.get() != k {
                    tally.out_of_order.set(tally.out_of_order.get() + 1);
                }
                slot.set(slot.get() + 1);
                tally.received.set(tally.received.get() + 1);
                let now = t0.elapsed().as_micros() as u64;
                tally
                    .latencies_us
                    .borrow_mut()
                    .push(now.saturating_sub(t) as u32);
                tally.last_receive.set(Some(Instant::now()));
            }
        }));
    }
    for (s, mut wr) in writers.drain(..senders).enumerate() {
        let tally = Rc::clone(&tally);
        tasks.push(tokio::task::spawn_local(async move {
            for k in 0..lines as u64 {
                // The slowest receiver of this sender must be within `window` lines.
                loop {
                    let slowest = (0..tally.clients)
                        .filter(|r| *r != s)
                        .map(|r| tally.got[r * tally.senders + s].get())
                        .min()
                        .unwrap_or(k);
                    if k < slowest + window as u64 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let t = t0.elapsed().as_micros();
                let msg = format!("{s} {k} {t}\r\n");
                if wr.write_all(msg.as_bytes()).await.is_err() {
                    return;
                }
            }
            // Keep the connection open until the end of the run.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(wr);
        }));
    }

    let expected = (senders * lines * (clients - 1)) as u64;
    // Done when everything arrived, or when nothing arrived for 5 s.
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if tally.received.get() >= expected {
            break;
        }
        let idle_since = tally.last_receive.get().unwrap_or(t0);
        if idle_since.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let elapsed = tally
        .last_receive
        .get()
        .map_or(Duration::ZERO, |l| l.duration_since(t0));
    let received = tally.received.get();
    let mut lat = tally.latencies_us.take();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p) as usize).min(lat.len() - 1);
        lat[i] as f64 / 1000.0
    };
    println!("clients={clients} senders={senders} lines_per_sender={lines} window={window}");
    println!("expected={expected}");
    println!("delivered={received}");
    println!("lost={}", expected.saturating_sub(received));
    println!("out_of_order={}", tally.out_of_order.get());
    println!("seconds={:.3}", elapsed.as_secs_f64());
    println!(
        "lines_per_sec={:.0}",
        received as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    println!("p50_ms={:.3}", pct(0.50));
    println!("p99_ms={:.3}", pct(0.99));
    println!("setup_seconds={:.3}", (t0 - start).as_secs_f64());
    for t in tasks {
        t.abort();
    }
}

/// A decimal number from ASCII digits.
fn number(digits: &[u8]) -> u64 {
    digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d.wrapping_sub(b'0')))
}

async fn quote(addr: SocketAddr, concurrency: usize, seconds: usize) {
    let done = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let until = Instant::now() + Duration::from_secs(seconds as u64);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let done = Rc::clone(&done);
        let errors = Rc::clone(&errors);
        tasks.push(tokio::task::spawn_local(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let one = async {
                    let stream = TcpStream::connect(addr).await?;
                    let (rd, mut wr) = stream.into_split();
                    wr.write_all(format!("quote {i} {n}\r\n").as_bytes())
                        .await?;
                    let mut rd = BufReader::new(rd);
                    let mut line = Vec::new();
                    let got = rd.read_until(b'\n', &mut line).await?;
                    if got == 0 {
                        return Err(std::io::Error::other("closed before replying"));
                    }
                    Ok::<(), std::io::Error>(())
                };
                match one.await {
                    Ok(()) => done.set(done.get() + 1),
                    Err(_) => errors.set(errors.get() + 1),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    println!("concurrency={concurrency}");
    println!("connections={}", done.get());
    println!("errors={}", errors.get());
    println!("seconds={elapsed:.3}");
    println!("conns_per_sec={:.0}", done.get() as f64 / elapsed);
}
