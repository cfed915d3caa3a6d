//! A streaming flow gets a receive low-water mark (`SO_RCVLOWAT`), so shunt wakes once per pipe
//! (256 KiB) instead of every few segments. The kernel does not wake a reader below the mark
//! when the sender just stops, so the mark has a rescue deadline: the tail of a message sent
//! after a bulk burst still arrives at once, not when more data or the FIN comes. Both
//! directions, a second burst and tail after the first (the flow then keeps no mark), every byte
//! checked.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BURST: usize = 4 << 20;
const TAIL: &[u8] = b"the tail of the message";

/// Reads exactly `n` bytes (panics on EOF or the client's read timeout).
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    v
}

/// The server side writes a burst then, once told, a tail; the client must get the tail within
/// a second of its sending (the rescue deadline is 1 ms; a stall would last until the server's
/// FIN, 20 s later). Twice on the same connection. `upload` makes the client the sender.
fn tail_arrives_after_burst(upload: bool) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    // Upload: the far end says when a part's burst has all arrived, so the tail comes alone.
    let (burst_in_tx, burst_in_rx) = mpsc::channel::<()>();
    let burst_in_tx = std::sync::Mutex::new(burst_in_tx);
    // The far end: as sender it writes burst, tail (on cue), twice; as receiver it checks every
    // byte and answers one byte at the end of each part ("!" when it was exact), so the client
    // can time the tail's arrival.
    let part = BURST + TAIL.len();
    let server = TcpServer::start(move |mut s, _| {
        let go = go_rx.lock().unwrap();
        let burst_in = burst_in_tx.lock().unwrap().clone();
        if upload {
            let expected: Vec<u8> = [pattern_bytes(BURST), TAIL.to_vec()].concat().repeat(2);
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut answered = 0;
            while answered < 2 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let before = got.len();
                        got.extend_from_slice(&buf[..n]);
                        let burst_end = answered * part + BURST;
                        if before < burst_end && got.len() >= burst_end {
                            let _ = burst_in.send(());
                        }
                    }
                }
                while answered < 2 && got.len() >= (answered + 1) * part {
                    let end = (answered + 1) * part;
                    let verdict: &[u8] = if got[..end] == expected[..end] { b"!" } else { b"X" };
                    let _ = s.write_all(verdict);
                    answered += 1;
                }
            }
        } else {
            for _ in 0..2 {
                s.write_all(&pattern_bytes(BURST)).unwrap();
                if go.recv_timeout(Duration::from_secs(30)).is_err() {
                    return;
                }
                s.write_all(TAIL).unwrap();
            }
        }
        std::thread::sleep(Duration::from_secs(20));
    });
    let shunt = start_shunt(&format!(
        "service bulk\n  bind 127.0.0.1:0\n  splice on\n  timeout idle 1m\n  server s {}\n",
        server.addr
    ));
    let mut c = connect(shunt.addr("bulk"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for round in 0..2 {
        if upload {
            c.write_all(&pattern_bytes(BURST)).unwrap();
            // The burst has drained through shunt: the tail comes alone, after a pause.
            burst_in_rx.recv_timeout(Duration::from_secs(10)).expect("the burst reached the server");
            let sent = Instant::now();
            c.write_all(TAIL).unwrap();
            assert_eq!(read_n(&mut c, 1), b"!", "round {round}");
            let took = sent.elapsed();
            assert!(took < Duration::from_secs(1), "round {round}: the tail took {took:?}");
        } else {
            assert_eq!(read_n(&mut c, BURST), pattern_bytes(BURST), "round {round}: the burst");
            let sent = Instant::now();
            go_tx.send(()).unwrap();
            assert_eq!(read_n(&mut c, TAIL.len()), TAIL, "round {round}: the tail");
            let took = sent.elapsed();
            assert!(took < Duration::from_secs(1), "round {round}: the tail took {took:?}");
        }
    }
}

/// The generator's bytes for a stream of `n`.
fn pattern_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    pattern_fill(7, 0, &mut v);
    v
}

#[test]
fn a_download_s_tail_after_a_burst_arrives_at_once() {
    tail_arrives_after_burst(false);
}

#[test]
fn an_upload_s_tail_after_a_burst_arrives_at_once() {
    tail_arrives_after_burst(true);
}
