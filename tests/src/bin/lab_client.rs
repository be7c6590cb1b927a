//! xlb-lab-client: a client for the lab that runs as its own process, so that the lab
//! can start it inside a pod (its network namespace and its node's cgroup) or on a node.
//!
//! Each argument is a request, `tcp:ADDR`, `udpc:ADDR` (connected UDP) or `udp:ADDR`
//! (unconnected UDP); each prints one JSON line: the server that answered, the client
//! address it saw, and the address the answer came from as this socket sees it
//! (getpeername for TCP and connected UDP, recvfrom's source for UDP): a Service's
//! replies must come from the address the client sent to.
//!
//! `--load SECONDS --threads N REQUEST` repeats one request (a new connection or a new
//! connected socket each time, as a client opening connections or a resolver sending
//! queries does) from N threads for SECONDS and prints one JSON line with the answered
//! and failed counts: the load generator of `cargo xtask bench`'s pod benchmarks.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--load") {
        match load(&args[1..]) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("xlb-lab-client: {e:#}");
                std::process::exit(2);
            }
        }
        return;
    }
    let mut failed = false;
    for arg in args {
        let result = request(&arg);
        failed |= result.is_err();
        let line = match result {
            Ok((server, seen, from)) => serde_json::json!({
                "request": arg, "ok": true, "server": server, "seen_client": seen, "from": from,
            }),
            Err(e) => serde_json::json!({"request": arg, "ok": false, "error": e.to_string()}),
        };
        println!("{line}");
    }
    std::process::exit(i32::from(failed));
}

/// `SECONDS --threads N REQUEST`: the request repeated from N threads for SECONDS.
fn load(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let [seconds, flag, threads, req] = args else {
        anyhow::bail!("usage: --load SECONDS --threads N REQUEST");
    };
    anyhow::ensure!(flag == "--threads", "expected --threads, got {flag:?}");
    let seconds: f64 = seconds.parse()?;
    let threads: usize = threads.parse()?;
    // One request first: a request that cannot work at all is an error, not a rate.
    request(req).map_err(|e| anyhow::anyhow!("{req}: {e}"))?;
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if request(req).is_ok() { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    Ok(serde_json::json!({
        "request": req,
        "ok": ok.into_inner(),
        "failed": failed.into_inner(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// (server name, client address the server saw, address the answer came from).
fn request(arg: &str) -> anyhow::Result<(String, String, String)> {
    let (kind, addr) = arg
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("{arg}: not KIND:ADDR"))?;
    let addr: SocketAddr = addr.parse()?;
    match kind {
        "tcp" => {
            let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            let from = stream.peer_addr()?;
            (&stream).write_all(b"peer\n")?;
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line)?;
            let (server, seen) = split(line.trim(), "")?;
            Ok((server, seen, canonical(from)))
        }
        "udpc" | "udp" => {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()?;
            let socket = UdpSocket::bind(bind)?;
            socket.set_read_timeout(Some(TIMEOUT / 2))?;
            if kind == "udpc" {
                socket.connect(addr)?;
            }
            let mut buf = [0u8; 512];
            let mut last = None;
            // A datagram may be lost while a neighbour entry is resolved: one retry.
            for _ in 0..2 {
                let sent = if kind == "udpc" {
                    socket.send(b"peer")
                } else {
                    socket.send_to(b"peer", addr)
                };
                sent?;
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        let (server, seen) = split(&text, "peer ")?;
                        let from = if kind == "udpc" {
                            socket.peer_addr()?
                        } else {
                            from
                        };
                        return Ok((server, seen, canonical(from)));
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("tried").into())
        }
        other => anyhow::bail!("{other}: not tcp, udpc or udp"),
    }
}

/// "<name> [marker]<addr>" into (name, canonical addr).
fn split(text: &str, marker: &str) -> anyhow::Result<(String, String)> {
    let (name, rest) = text
        .split_once(' ')
        .ok_or_else(|| anyhow::anyhow!("unexpected answer {text:?}"))?;
    let seen: SocketAddr = rest.trim_start_matches(marker).trim().parse()?;
    Ok((name.to_string(), canonical(seen)))
}

/// IPv4-mapped IPv6 addresses as IPv4 (the servers listen dual-stack).
fn canonical(a: SocketAddr) -> String {
    SocketAddr::new(a.ip().to_canonical(), a.port()).to_string()
}
