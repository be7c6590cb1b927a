//! Clients used against the lab's services. They run on a thread inside the client's
//! namespace (see `Netns::run`). The servers answer every request with their name.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

pub const TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP connection that can ask the server its name any number of times.
pub struct TcpSession {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl TcpSession {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// The address the connection is established with (the kernel only accepts segments
    /// from exactly this address and port).
    pub fn peer(&self) -> std::io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    pub fn local(&self) -> std::io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// Sends a request line and returns the server's name.
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.stream.write_all(b"who\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(line.trim().to_string())
    }
}

/// One TCP connection, one request: returns the server's name.
pub fn tcp_ask(addr: SocketAddr) -> std::io::Result<String> {
    TcpSession::connect(addr)?.ask()
}

/// Sends one datagram from `sock` and returns the reply's text and source address.
pub fn udp_ask(
    sock: &UdpSocket,
    addr: SocketAddr,
    id: u64,
) -> std::io::Result<(String, SocketAddr)> {
    sock.set_read_timeout(Some(TIMEOUT))?;
    let payload = format!("req {id}");
    sock.send_to(payload.as_bytes(), addr)?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        // "<name> req <id>": skip stale replies to earlier requests.
        if let Some((name, rest)) = text.split_once(' ')
            && rest == payload
        {
            return Ok((name.to_string(), from));
        }
    }
}

/// An unconnected UDP socket of the right family, on an ephemeral port.
pub fn udp_socket(for_addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if for_addr.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    UdpSocket::bind(bind)
}
