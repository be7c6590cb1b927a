//! xlb-lab-server: a backend for the lab. Answers TCP and UDP requests with its name.
//!
//! TCP: each request line gets one reply line, the server's name, on a connection that
//! stays open (so tests can hold long-lived connections); the line `peer` gets
//! "<name> <client address:port as seen here>"; an HTTP GET gets a one-line HTTP
//! response (so `curl http://VIP/` works in the demo). UDP: each datagram gets
//! "<name> <datagram>", and the datagram `peer` "<name> peer <client address:port>". Listens dual-stack on [::]. Prints "ready" once listening.
//! `--close-port P` also accepts connections on P and closes them at once (for measuring
//! new connections per second without a thread per connection).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut name, mut tcp, mut udp) = (String::from("backend"), 8080u16, 5353u16);
    let mut close_port: Option<u16> = None;
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--name" => name = value()?,
            "--tcp-port" => tcp = value()?.parse()?,
            "--udp-port" => udp = value()?.parse()?,
            "--close-port" => close_port = Some(value()?.parse()?),
            other => anyhow::bail!(
                "unknown argument {other}; usage: xlb-lab-server --name N --tcp-port P --udp-port P [--close-port P]"
            ),
        }
    }
    let listener = TcpListener::bind(("::", tcp))?;
    let socket = UdpSocket::bind(("::", udp))?;
    if let Some(port) = close_port {
        let closer = TcpListener::bind(("::", port))?;
        thread::spawn(move || {
            for stream in closer.incoming() {
                drop(stream);
            }
        });
    }
    println!("ready {name} tcp {tcp} udp {udp}");

    let udp_name = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let mut reply = format!("{udp_name} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            if &buf[..n] == b"peer" {
                reply.extend_from_slice(format!(" {from}").as_bytes());
            }
            let _ = socket.send_to(&reply, from);
        }
    });
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || {
            let _ = serve(stream, &name);
        });
    }
    Ok(())
}

fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.starts_with("GET ") {
            // Consume the request headers, answer, close.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                    break;
                }
            }
            let body = format!("{name}\n");
            write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            return Ok(());
        }
        if line.trim_end() == "peer" {
            writer.write_all(format!("{name} {peer}\n").as_bytes())?;
            continue;
        }
        writer.write_all(format!("{name}\n").as_bytes())?;
    }
}
