//! A tiny HTTP/1.1 server to stand behind shunt in `make run` and in tests.
//!
//! ```text
//! demo_backend --listen 127.0.0.1:9001 --name web-01
//! ```
//!
//! Every request gets `200` with the body `hello from NAME\n`, except `GET /health`, which gets
//! `200 ok\n`, so a health check and a person with curl can tell the servers apart. Keep-alive
//! (the HTTP/1.1 default), `Connection: close` and HTTP/1.0 are honoured, pipelined requests are
//! answered in order. One thread per connection: this is a demo, not a benchmark peer (use nginx
//! for that). Standard library only, so it builds as a cargo example with no extra dependencies.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::exit;
use std::thread;
use std::time::Duration;

/// Requests larger than this are answered with 431 and the connection is closed.
const MAX_HEAD: usize = 16 * 1024;
/// A keep-alive connection that sends nothing for this long is closed, so abandoned
/// connections do not hold threads forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn usage() -> ! {
    eprintln!("usage: demo_backend --listen ADDR --name NAME");
    exit(2);
}

fn main() {
    let mut listen = None;
    let mut name = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" | "-l" => listen = Some(args.next().unwrap_or_else(|| usage())),
            "--name" | "-n" => name = Some(args.next().unwrap_or_else(|| usage())),
            "--help" | "-h" => usage(),
            _ => {
                eprintln!("demo_backend: unknown argument {a:?}");
                usage();
            }
        }
    }
    let listen = listen.unwrap_or_else(|| usage());
    let name = name.unwrap_or_else(|| usage());

    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo_backend: cannot listen on {listen}: {e}");
            exit(1);
        }
    };
    // Print the bound address (not the argument) so `--listen 127.0.0.1:0` is usable too.
    let addr = listener.local_addr().expect("local_addr");
    println!("listening on {addr}");
    let _ = io::stdout().flush();

    let body: &'static str = Box::leak(format!("hello from {name}\n").into_boxed_str());
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    // Errors here are the client's doing (reset, timeout): nothing to report.
                    let _ = serve(stream, body);
                });
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(e) => {
                eprintln!("demo_backend: accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One parsed request head: only what deciding the answer needs.
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: usize,
    chunked: bool,
}

fn serve(stream: TcpStream, body: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_head(&mut reader)? {
            Some(Ok(r)) => r,
            Some(Err((status, reason))) => {
                respond(&mut writer, status, reason, "bad request\n", false, false)?;
                return Ok(());
            }
            None => return Ok(()), // clean EOF between requests
        };
        if req.chunked {
            // Not worth a chunked decoder in a demo: say so and close.
            respond(&mut writer, 501, "Not Implemented", "chunked bodies unsupported\n", false, false)?;
            return Ok(());
        }
        // Discard the request body so the next pipelined request starts where it should.
        io::copy(&mut (&mut reader).take(req.content_length as u64), &mut io::sink())?;

        let head_only = req.method == "HEAD";
        let text = if req.path == "/health" { "ok\n" } else { body };
        respond(&mut writer, 200, "OK", text, req.keep_alive, head_only)?;
        if !req.keep_alive {
            return Ok(());
        }
    }
}

type HeadResult = Option<Result<Request, (u16, &'static str)>>;

/// Reads one request head. `None` on EOF before any byte of a new request.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<HeadResult> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.by_ref().take((MAX_HEAD + 1 - total) as u64).read_line(&mut line)?;
        if n == 0 {
            if lines.is_empty() && total == 0 {
                return Ok(None);
            }
            return Ok(Some(Err((400, "Bad Request")))); // EOF or size cap mid-head
        }
        total += n;
        if total > MAX_HEAD {
            return Ok(Some(Err((431, "Request Header Fields Too Large"))));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // tolerate stray CRLFs between requests (RFC 9112 §2.2)
            }
            break;
        }
        lines.push(line);
    }

    let mut parts = lines[0].split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(Some(Err((400, "Bad Request"))));
    };
    let mut req = Request {
        method: method.to_string(),
        path: path.split('?').next().unwrap_or(path).to_string(),
        // HTTP/1.1 keeps the connection open unless told otherwise; 1.0 closes unless told.
        keep_alive: version == "HTTP/1.1",
        content_length: 0,
        chunked: false,
    };
    for h in &lines[1..] {
        let Some((k, v)) = h.split_once(':') else {
            return Ok(Some(Err((400, "Bad Request"))));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "connection" => {
                for token in v.split(',').map(str::trim) {
                    match token {
                        "close" => req.keep_alive = false,
                        "keep-alive" => req.keep_alive = true,
                        _ => {}
                    }
                }
            }
            "content-length" => match v.parse() {
                Ok(n) => req.content_length = n,
                Err(_) => return Ok(Some(Err((400, "Bad Request")))),
            },
            "transfer-encoding" => req.chunked = v.contains("chunked"),
            _ => {}
        }
    }
    Ok(Some(Ok(req)))
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let conn = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    // One write per response: fewer packets, and a pipelining client sees whole answers.
    w.write_all(out.as_bytes())?;
    w.flush()
}
