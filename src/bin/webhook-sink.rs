//! A local stand-in for the endpoint batches are posted to.
//!
//! It prints every batch it receives, one line each, so `make run` shows batches
//! flowing and tests can check exactly what arrived. Flags make it fail, answer a
//! fixed status, or answer slowly, to try the forwarder's failure paths by hand.
//!
//! It runs the forwarder's own sans-IO HTTP connection over plain blocking sockets,
//! a thread per connection: the same parser, in a second shell.
//!
//! Gzip bodies (`--post-compression gzip`) are recognised by their magic bytes and
//! inflated, at most `--max-inflated-bytes`, so a decompression bomb gets 413 rather
//! than the receiver's memory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argh::FromArgs;
use webhook_forwarder::duration::parse_go_duration;
use webhook_forwarder::gzip::{self, InflateError};
use webhook_forwarder::http::{
    BufferPool, Conn, Exchange, Handler, Io, Limits, Method, Reply, Response,
};

/// Receive webhook batches and print them: a local endpoint for webhook-forwarder.
#[derive(FromArgs)]
struct Flags {
    /// address to listen on (default 127.0.0.1:9000; port 0 picks a free one)
    #[argh(option, default = "String::from(\"127.0.0.1:9000\")")]
    listen: String,
    /// answer 500 to the first N batches, then 200
    #[argh(option, default = "0")]
    fail_first: u64,
    /// answer every batch with this status instead of 200
    #[argh(option)]
    status: Option<u16>,
    /// answer 500 to every Nth batch
    #[argh(option, default = "0")]
    fail_every: u64,
    /// wait this long (a Go duration) before answering a batch
    #[argh(option)]
    delay: Option<String>,
    /// with --delay, wait only before every Nth batch (default: before each one)
    #[argh(option, default = "1")]
    slow_every: u64,
    /// print only the count of each batch, not its records
    #[argh(switch)]
    quiet: bool,
    /// refuse with 413 a gzip body that inflates past this many bytes (default 64 MiB)
    #[argh(option, default = "64 * 1024 * 1024")]
    max_inflated_bytes: usize,
    /// refuse (see --refuse-status) a batch holding a record with this user_id (repeatable)
    #[argh(option)]
    refuse_user_id: Vec<i64>,
    /// refuse a batch holding a record whose user_id is a multiple of N
    #[argh(option, default = "0")]
    refuse_multiple_of: i64,
    /// the status that refuses a batch (default 400)
    #[argh(option, default = "400")]
    refuse_status: u16,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

struct Behaviour {
    fail_first: u64,
    fail_every: u64,
    status: Option<u16>,
    delay: Duration,
    slow_every: u64,
    quiet: bool,
    max_inflated_bytes: usize,
    refuse_user_ids: Vec<i64>,
    refuse_multiple_of: i64,
    refuse_status: u16,
    received: AtomicU64,
    /// Serializes whole lines so concurrent connections never interleave them.
    stdout: Mutex<()>,
}

impl Behaviour {
    /// Whether the batch holds a record this sink is told to refuse, as an endpoint
    /// refuses one bad record (a gateway's 413, an API's 400 or 422).
    fn refuses(&self, body: &[u8]) -> bool {
        if self.refuse_user_ids.is_empty() && self.refuse_multiple_of == 0 {
            return false;
        }
        let Ok(records) = serde_json::from_slice::<Vec<serde_json::Value>>(body) else {
            return false;
        };
        records
            .iter()
            .filter_map(|r| r["user_id"].as_i64())
            .any(|id| {
                self.refuse_user_ids.contains(&id)
                    || (self.refuse_multiple_of > 0 && id % self.refuse_multiple_of == 0)
            })
    }
}

struct Sink {
    behaviour: Arc<Behaviour>,
}

impl Handler for Sink {
    type Route = bool;

    fn route(&mut self, method: Method, _path: &str, _authorization: Option<&[u8]>) -> bool {
        method == Method::Post
    }

    fn early_answer(&mut self, _is_post: bool) -> Option<Response<'_>> {
        None
    }

    fn respond(&mut self, is_post: bool, body: &[u8]) -> Reply<'_> {
        if !is_post {
            return Response::text(200, b"webhook-sink: POST batches here\n").into();
        }
        let b = &*self.behaviour;
        // Printed between delayed= and body=, where the tests' line parser skips it.
        let mut inflated = Vec::new();
        let (body, encoding) = if gzip::is_gzip(body) {
            match gzip::gunzip_bounded(body, b.max_inflated_bytes, &mut inflated) {
                Ok(()) => (&inflated[..], " encoding=gzip"),
                Err(refused) => {
                    let (status, why): (u16, &[u8]) = match refused {
                        InflateError::TooLarge => (413, b"gzip body inflates too far\n"),
                        InflateError::Invalid(_) => (400, b"broken gzip body\n"),
                    };
                    let _line = b.stdout.lock();
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(
                        out,
                        "batch records=? status={status} delayed=false encoding=gzip refused"
                    );
                    let _ = out.flush();
                    return Response::text(status, why).into();
                }
            }
        } else {
            (body, "")
        };
        let n = b.received.fetch_add(1, Ordering::SeqCst) + 1;
        let delayed = !b.delay.is_zero() && b.slow_every > 0 && n.is_multiple_of(b.slow_every);
        if delayed {
            std::thread::sleep(b.delay);
        }
        let status = match b.status {
            _ if b.refuses(body) => b.refuse_status,
            Some(status) => status,
            None if n <= b.fail_first => 500,
            None if b.fail_every > 0 && n.is_multiple_of(b.fail_every) => 500,
            None => 200,
        };
        let count = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body)
            .map_or("?".to_owned(), |v| v.len().to_string());
        {
            let _line = b.stdout.lock();
            let mut out = std::io::stdout().lock();
            let _ = if b.quiet {
                writeln!(
                    out,
                    "batch records={count} status={status} delayed={delayed}{encoding}"
                )
            } else {
                writeln!(
                    out,
                    "batch records={count} status={status} delayed={delayed}{encoding} body={}",
                    String::from_utf8_lossy(body)
                )
            };
            let _ = out.flush();
        }
        Response::text(
            status,
            if (200..300).contains(&status) {
                b"ok\n"
            } else {
                b"failing on purpose\n"
            },
        )
        .into()
    }

    fn exchanged(&mut self, _exchange: &Exchange<'_, bool>) {}
}

/// The connection's view of the sink, at the current time (no `Date` header).
fn io_for<'a>(sink: &'a mut Sink, limits: &'a Limits, pool: &'a mut BufferPool) -> Io<'a, Sink> {
    Io {
        handler: sink,
        limits,
        pool,
        now: Instant::now(),
        date: b"",
    }
}

fn serve(mut stream: TcpStream, behaviour: Arc<Behaviour>) {
    let limits = Limits {
        max_body_bytes: 256 * 1024 * 1024,
        // It reads gzip bodies itself (by their magic bytes).
        refuse_content_coding: false,
        ..Limits::default()
    };
    let mut pool = BufferPool::new(4);
    let mut sink = Sink { behaviour };
    let mut conn: Conn<bool> = Conn::new(Instant::now());
    let mut buf = vec![0u8; 64 * 1024];
    let _ = stream.set_read_timeout(Some(limits.idle_timeout));
    let _ = stream.set_nodelay(true);
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(_) => return,
        };
        let mut io = io_for(&mut sink, &limits, &mut pool);
        if n == 0 {
            conn.peer_closed(&mut io);
        } else {
            conn.feed(&buf[..n], &mut io);
        }
        while !conn.output().is_empty() {
            if stream.write_all(conn.output()).is_err() {
                return;
            }
            let written = conn.output().len();
            conn.consumed_output(written, &mut pool, Instant::now());
            let mut io = io_for(&mut sink, &limits, &mut pool);
            conn.resume(&mut io);
        }
        if conn.is_closing() {
            return;
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // argh knows only --help; -h is what people type first.
    let args: Vec<&str> = args
        .iter()
        .map(|arg| if arg == "-h" { "--help" } else { arg.as_str() })
        .collect();
    let flags = match Flags::from_args(&["webhook-sink"], &args) {
        Ok(flags) => flags,
        Err(exit) if exit.status.is_ok() => {
            print!("{}", exit.output);
            return std::process::ExitCode::SUCCESS;
        }
        Err(exit) => {
            eprintln!("{}", exit.output.trim_end());
            return std::process::ExitCode::from(2);
        }
    };
    if flags.version {
        println!("webhook-sink {}", webhook_forwarder::VERSION);
        return std::process::ExitCode::SUCCESS;
    }
    let delay = match flags.delay.as_deref().map(parse_go_duration) {
        None => Duration::ZERO,
        Some(Ok(nanos)) if nanos >= 0 => Duration::from_nanos(nanos as u64),
        Some(_) => {
            eprintln!("webhook-sink: --delay is not a Go duration (e.g. 500ms, 2s)");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&flags.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webhook-sink: cannot listen on {}: {e}", flags.listen);
            return std::process::ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| flags.listen.clone());
    println!("webhook-sink listening on {addr}");
    let _ = std::io::stdout().flush();
    let behaviour = Arc::new(Behaviour {
        fail_first: flags.fail_first,
        fail_every: flags.fail_every,
        status: flags.status,
        delay,
        slow_every: flags.slow_every,
        quiet: flags.quiet,
        max_inflated_bytes: flags.max_inflated_bytes,
        refuse_user_ids: flags.refuse_user_id,
        refuse_multiple_of: flags.refuse_multiple_of,
        refuse_status: flags.refuse_status,
        received: AtomicU64::new(0),
        stdout: Mutex::new(()),
    });
    for stream in listener.incoming().flatten() {
        let behaviour = Arc::clone(&behaviour);
        let _ = std::thread::Builder::new()
            .name("sink-conn".into())
            .spawn(move || serve(stream, behaviour));
    }
    std::process::ExitCode::SUCCESS
}
