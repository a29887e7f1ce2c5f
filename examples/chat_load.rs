//! Load generator for the chat and quote benchmarks (`benches/chat/run.sh` drives it).
//!
//! ```sh
//! cargo run --release --example chat_load -- chat 127.0.0.1:7000 [CLIENTS] [SENDERS] [LINES] [WINDOW]
//! cargo run --release --example chat_load -- quote 127.0.0.1:7001 [CONCURRENCY] [SECONDS]
//! ```
//!
//! `chat`: CLIENTS members join as `c000`, `c001`, … (any server that prompts for a name on
//! connect and confirms with one line: oxicorn's chat and the classic Twisted `LineReceiver`
//! chat both do), then SENDERS of them each send LINES lines, `SSS KKKKKKK` (sender, sequence
//! number). A sender keeps at most WINDOW of its lines in flight to its slowest receiver, and
//! writes what the window allows in one write, so the measurement is the server's throughput,
//! not how deep it lets queues grow. Prints delivered lines/s, p50/p99 delivery latency, lost
//! and out-of-order lines, one `key=value` per line.
//!
//! The generator shares the CPUs with the server, so it is built to cost little per line: one
//! thread, one clock read per `read`, fields at fixed offsets of fixed-width lines, every line
//! checked for loss and order but the latency of one line in [`SAMPLE`] recorded (by sequence
//! number, millions of samples a run) in a histogram.
//!
//! `quote`: CONCURRENCY loops of connect, send a line, read the reply, close, for SECONDS;
//! prints connections/s.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::io::Write as _;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;
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
    lines: usize,
    /// `got[r * senders + s]`: lines from sender `s` received by client `r`; also the next
    /// sequence number expected, so a gap or a repeat counts as out of order.
    got: Vec<Cell<u64>>,
    /// `sent_at[s * lines + k]`: when sender `s` wrote line `k`, in µs since the start.
    sent_at: Vec<Cell<u32>>,
    received: Cell<u64>,
    out_of_order: Cell<u64>,
    /// Delivery latency in [`BUCKET_US`] buckets; the last one counts everything slower.
    latency: Vec<Cell<u64>>,
    last_receive: Cell<Option<Instant>>,
    /// Pinged after every read, so a sender waiting for its window wakes up.
    progress: Notify,
}

/// Latency histogram resolution and range (10 µs up to 20 s).
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 2_000_000;

/// One line in this many (by sequence number) has its latency recorded: the percentiles come
/// from a sample of millions of deliveries, without a clock lookup per line.
const SAMPLE: u64 = 8;

/// A chat line as both servers relay it: `<cNNN> SSS KKKKKKK\r\n`, 20 bytes. Fixed widths let
/// the receivers read the fields at fixed offsets instead of parsing.
const LINE: usize = 20;

async fn chat(addr: SocketAddr, clients: usize, senders: usize, lines: usize, window: usize) {
    assert!(clients <= 1000 && senders <= 1000 && lines <= 10_000_000);
    let start = Instant::now();
    let tally = Rc::new(Tally {
        clients,
        senders,
        lines,
        got: (0..clients * senders).map(|_| Cell::new(0)).collect(),
        sent_at: (0..senders * lines).map(|_| Cell::new(0)).collect(),
        received: Cell::new(0),
        out_of_order: Cell::new(0),
        latency: (0..BUCKETS).map(|_| Cell::new(0)).collect(),
        last_receive: Cell::new(None),
        progress: Notify::new(),
    });

    // Join everybody first.
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for i in 0..clients {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(256 * 1024, rd);
        let mut line = Vec::new();
        rd.read_until(b'\n', &mut line).await.expect("prompt");
        wr.write_all(format!("c{i:03}\r\n").as_bytes())
            .await
            .unwrap();
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
            // What is left of a line cut by the end of a read.
            let mut carry: Vec<u8> = Vec::with_capacity(4096);
            loop {
                let buf = match rd.fill_buf().await {
                    Ok([]) | Err(_) => return,
                    Ok(b) => b,
                };
                let n = buf.len();
                let now = t0.elapsed().as_micros() as u64;
                let mut rest = buf;
                let mut delivered = 0;
                if !carry.is_empty() {
                    // Finish the cut line first.
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            carry.extend_from_slice(&rest[..=i]);
                            delivered += tally.line(r, &carry, now);
                            carry.clear();
                            rest = &rest[i + 1..];
                        }
                        None => {
                            carry.extend_from_slice(rest);
                            rest = &[];
                        }
                    }
                }
                while !rest.is_empty() {
                    if rest.len() >= LINE && rest[0] == b'<' && rest[LINE - 1] == b'\n' {
                        delivered += tally.chat_line(r, &rest[..LINE], now);
                        rest = &rest[LINE..];
                        continue;
                    }
                    match rest.iter().position(|b| *b == b'\n') {
                        Some(i) => {
                            delivered += tally.line(r, &rest[..=i], now);
                            rest = &rest[i + 1..];
                        }
                        None => {
                            carry.extend_from_slice(rest);
                            rest = &[];
                        }
                    }
                }
                rd.consume(n);
                tally.received.set(tally.received.get() + delivered);
                tally.last_receive.set(Some(Instant::now()));
                tally.progress.notify_waiters();
            }
        }));
    }
    for (s, mut wr) in writers.drain(..senders).enumerate() {
        let tally = Rc::clone(&tally);
        tasks.push(tokio::task::spawn_local(async move {
            let mut k = 0usize;
            let mut out = Vec::with_capacity(window.min(lines) * 13);
            while k < lines {
                // Registered before looking, so progress made meanwhile is not missed.
                let progress = tally.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                // The slowest receiver of this sender must be within `window` lines.
                let slowest = (0..tally.clients)
                    .filter(|r| *r != s)
                    .map(|r| tally.got[r * tally.senders + s].get())
                    .min()
                    .unwrap_or(k as u64) as usize;
                let allowed = lines.min(slowest + window);
                if k >= allowed {
                    progress.await;
                    continue;
                }
                let t = t0.elapsed().as_micros() as u32;
                out.clear();
                for seq in k..allowed {
                    tally.sent_at[s * tally.lines + seq].set(t);
                    write!(out, "{s:03} {seq:07}\r\n").unwrap();
                }
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                k = allowed;
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
    let lat: Vec<u64> = tally.latency.iter().map(Cell::get).collect();
    let sampled: u64 = lat.iter().sum();
    let pct = |p: f64| -> f64 {
        let want = (sampled as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in lat.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return (i as u64 * BUCKET_US) as f64 / 1000.0;
            }
        }
        0.0
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

impl Tally {
    /// Any line: a chat line in the fixed format is counted, anything else (notices) is not.
    fn line(&self, r: usize, line: &[u8], now: u64) -> u64 {
        if line.len() == LINE && line[0] == b'<' {
            self.chat_line(r, line, now)
        } else {
            0
        }
    }

    /// `<cNNN> SSS KKKKKKK\r\n`, from client `r`'s socket, read at `now`; returns 1 if it counts
    /// as delivered. Every line is checked for order; the latency of one in [`SAMPLE`] (by
    /// sequence number, so every sender and receiver is sampled alike) goes in the histogram.
    fn chat_line(&self, r: usize, line: &[u8], now: u64) -> u64 {
        let s = number(&line[7..10]) as usize;
        let k = number(&line[11..18]);
        if s >= self.senders || k as usize >= self.lines {
            self.out_of_order.set(self.out_of_order.get() + 1);
            return 0;
        }
        let slot = &self.got[r * self.senders + s];
        let next = slot.get();
        if next != k {
            self.out_of_order.set(self.out_of_order.get() + 1);
        }
        slot.set(next + 1);
        if k.is_multiple_of(SAMPLE) {
            let sent = u64::from(self.sent_at[s * self.lines + k as usize].get());
            let bucket = (now.saturating_sub(sent) / BUCKET_US).min(BUCKETS as u64 - 1);
            let b = &self.latency[bucket as usize];
            b.set(b.get() + 1);
        }
        1
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
