//! A client of Node's inspector: where a process's inspector listens (its
//! listening sockets, from `/proc/PID/net/tcp{,6}` and its fd inodes), the
//! HTTP `GET /json/list` that names its WebSocket, and the Chrome DevTools
//! Protocol over that WebSocket (tungstenite, synchronous: one request at a
//! time, events read in between).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    #[error("cannot read the sockets of process {pid}: {source}")]
    Sockets { pid: u32, source: io::Error },
    #[error("cannot reach the inspector at {addr}: {source}")]
    Unreachable { addr: SocketAddr, source: io::Error },
    #[error("the inspector at {addr} answered unexpectedly: {what}")]
    Protocol { addr: SocketAddr, what: String },
    #[error("the inspector connection closed")]
    Closed,
    #[error("inspector WebSocket: {0}")]
    WebSocket(String),
    #[error("the inspector refused {method}: {message}")]
    Refused { method: String, message: String },
    #[error("no worker thread {id} (its threadId); the process has {available}")]
    NoWorker { id: u32, available: String },
    #[error("the inspector did not answer {0} within 10 s")]
    NoAnswer(&'static str),
    #[error("worker thread {0} exited")]
    WorkerExited(u32),
}

/// Listening TCP sockets the process holds, by address.
pub fn listening(pid: u32) -> Result<Vec<SocketAddr>, InspectorError> {
    let err = |source| InspectorError::Sockets { pid, source };
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(err)? {
        let Ok(entry) = entry else { continue };
        if let Ok(link) = std::fs::read_link(entry.path()) {
            let link = link.to_string_lossy();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut found = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        // The table of the target's network namespace.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            if let Some(addr) = parse_addr(f[1], v6) {
                found.push(addr);
            }
        }
    }
    Ok(found)
}

/// `0100007F:2405` → 127.0.0.1:9221 (the kernel prints 32-bit words in host order).
fn parse_addr(text: &str, v6: bool) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::from_be))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match (v6, words.as_slice()) {
        (false, [w]) => IpAddr::V4(Ipv4Addr::from(w.to_be_bytes())),
        (true, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Where to connect for a socket listening on `addr`: a wildcard address
/// is reached on loopback.
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// The WebSocket URL of the process's main-thread target, from `GET /json/list`.
/// None when whatever listens there is not an inspector.
pub fn debugger_url(addr: SocketAddr) -> Result<Option<String>, InspectorError> {
    let unreachable = |source| InspectorError::Unreachable { addr, source };
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(3);
    // Node's inspector answers with a Content-Length and may keep the connection open.
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if complete(&response) || Instant::now() > deadline || response.len() > 1 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return Ok(None);
    };
    let Ok(list) = serde_json::from_str::<Value>(body) else {
        return Ok(None);
    };
    Ok(list.as_array().and_then(|targets| {
        targets
            .iter()
            .find_map(|t| t.get("webSocketDebuggerUrl")?.as_str().map(String::from))
    }))
}

fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|len| body.len() >= len)
}

/// A DevTools protocol session.
pub struct Session {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Requests go to this worker's session (`NodeWorker.sendMessageToWorker`):
    /// its thread id and session id.
    worker: Option<(u32, String)>,
}

/// What one read of the session gave.
pub enum Incoming {
    /// An event: method and params.
    Event(String, Value),
    /// The response to a request.
    Response(u64, Result<Value, String>),
    /// Nothing within the poll interval.
    Idle,
}

impl Session {
    /// Connects to the WebSocket `url` through `addr` (the URL's host may not
    /// be reachable by name from here).
    pub fn connect(addr: SocketAddr, url: &str) -> Result<Session, InspectorError> {
        let unreachable = |source| InspectorError::Unreachable { addr, source };
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(unreachable)?;
        stream.set_nodelay(true).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(unreachable)?;
        let (ws, _) = tungstenite::client(url, stream)
            .map_err(|e| InspectorError::WebSocket(e.to_string()))?;
        // Reads wake up often, so signals and a dead target are noticed.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(unreachable)?;
        Ok(Session {
            ws,
            next_id: 1,
            worker: None,
        })
    }

    /// Sends a request; its response comes back through [`Session::next`].
    pub fn send(&mut self, method: &str, params: Value) -> Result<u64, InspectorError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut text = json!({ "id": id, "method": method, "params": params }).to_string();
        if let Some((_, session)) = &self.worker {
            // One id space for both levels: the wrapper's own response is
            // never mistaken for the worker's.
            let outer = self.next_id;
            self.next_id += 1;
            text = json!({
                "id": outer,
                "method": "NodeWorker.sendMessageToWorker",
                "params": { "sessionId": session, "message": text },
            })
            .to_string();
        }
        tracing::debug!("inspector request: {text}");
        self.ws
            .send(Message::text(text))
            .map_err(|e| InspectorError::WebSocket(e.to_string()))?;
        Ok(id)
    }

    /// The next message (of the worker, once attached to one), or Idle
    /// after the poll interval.
    pub fn next(&mut self) -> Result<Incoming, InspectorError> {
        let incoming = self.next_message()?;
        let Some((thread, session)) = &self.worker else {
            return Ok(incoming);
        };
        let of_this = |params: &Value| {
            params.get("sessionId").and_then(Value::as_str) == Some(session.as_str())
        };
        match incoming {
            Incoming::Event(method, params)
                if method == "NodeWorker.receivedMessageFromWorker" && of_this(&params) =>
            {
                let text = params.get("message").and_then(Value::as_str).unwrap_or("");
                parse_message(text)
            }
            Incoming::Event(method, params)
                if method == "NodeWorker.detachedFromWorker" && of_this(&params) =>
            {
                Err(InspectorError::WorkerExited(*thread))
            }
            // The main thread's own traffic.
            Incoming::Event(..) | Incoming::Response(..) | Incoming::Idle => Ok(Incoming::Idle),
        }
    }

    /// Sends the following requests to worker thread `thread_id` (its
    /// `threadId`). The inspector's own `workerId` is a counter of the
    /// session, not the thread id: the thread id is read from the worker's
    /// title, `[worker N] name` (node 18 to 26).
    pub fn attach_worker(&mut self, thread_id: u32) -> Result<(), InspectorError> {
        let id = self.send(
            "NodeWorker.enable",
            json!({ "waitForDebuggerOnStart": false }),
        )?;
        // Node announces every worker (attachedToWorker) before it answers.
        let mut workers: Vec<(u32, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut answered = false;
        while Instant::now() < deadline {
            match self.next_message()? {
                Incoming::Event(method, params) if method == "NodeWorker.attachedToWorker" => {
                    let text = |p: &str| params.pointer(p).and_then(Value::as_str).unwrap_or("");
                    let thread = title_thread_id(text("/workerInfo/title"))
                        // Another title format: the inspector's id is the
                        // best guess left (it equals the thread id as long
                        // as no worker exited before this session).
                        .or_else(|| text("/workerInfo/workerId").parse().ok());
                    if let Some(thread) = thread {
                        workers.push((thread, text("/sessionId").to_string()));
                    }
                }
                Incoming::Response(got, result) if got == id => {
                    result.map_err(|message| InspectorError::Refused {
                        method: "NodeWorker.enable".into(),
                        message,
                    })?;
                    answered = true;
                    break;
                }
                _ => {}
            }
        }
        if !answered {
            return Err(InspectorError::NoAnswer("NodeWorker.enable"));
        }
        match workers.iter().find(|(thread, _)| *thread == thread_id) {
            Some((_, session)) => {
                self.worker = Some((thread_id, session.clone()));
                Ok(())
            }
            None => Err(InspectorError::NoWorker {
                id: thread_id,
                available: if workers.is_empty() {
                    "none".to_string()
                } else {
                    workers.sort();
                    let ids: Vec<String> = workers.iter().map(|(t, _)| t.to_string()).collect();
                    format!("worker threads {}", ids.join(", "))
                },
            }),
        }
    }

    /// Requests go to the main thread again. `NodeWorker.disable` alone
    /// leaves the worker's session attached, so it is detached first.
    pub fn detach_worker(&mut self) {
        if let Some((_, session)) = self.worker.take() {
            let _ = self.send("NodeWorker.detach", json!({ "sessionId": session }));
            let _ = self.send("NodeWorker.disable", json!({}));
        }
    }

    fn next_message(&mut self) -> Result<Incoming, InspectorError> {
        match self.ws.read() {
            Ok(Message::Text(text)) => {
                tracing::trace!("inspector: {}", &text.as_str()[..text.len().min(200)]);
                parse_message(text.as_str())
            }
            Ok(Message::Close(_)) => Err(InspectorError::Closed),
            Ok(_) => Ok(Incoming::Idle),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(Incoming::Idle)
            }
            Err(
                tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(_),
            ) => Err(InspectorError::Closed),
            Err(tungstenite::Error::Io(_)) => Err(InspectorError::Closed),
            Err(e) => Err(InspectorError::WebSocket(e.to_string())),
        }
    }

    /// Sends a request and waits for its response, events in between dropped.
    pub fn call(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
        mut stop: impl FnMut() -> bool,
    ) -> Result<Option<Value>, InspectorError> {
        let id = self.send(method, params)?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !stop() {
            if let Incoming::Response(got, result) = self.next()? {
                if got == id {
                    return result.map(Some).map_err(|message| InspectorError::Refused {
                        method: method.to_string(),
                        message,
                    });
                }
            }
        }
        Ok(None)
    }
}

/// The thread id in a worker's inspector title, `[worker 2] name`.
fn title_thread_id(title: &str) -> Option<u32> {
    let rest = title.strip_prefix("[worker ")?;
    rest[..rest.find(']')?].parse().ok()
}

/// One protocol message: a response (it has an id) or an event.
fn parse_message(text: &str) -> Result<Incoming, InspectorError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| InspectorError::WebSocket(e.to_string()))?;
    if let Some(id) = v.get("id").and_then(Value::as_u64) {
        let result = match v.get("error") {
            Some(e) => Err(e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string()),
            None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        };
        return Ok(Incoming::Response(id, result));
    }
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let params = v.get("params").cloned().unwrap_or(Value::Null);
    Ok(Incoming::Event(method, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            parse_addr("0100007F:2405", false),
            Some("127.0.0.1:9221".parse().unwrap())
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:2405", true),
            Some("[::1]:9221".parse().unwrap())
        );
        assert_eq!(
            connect_addr("0.0.0.0:9229".parse().unwrap()),
            "127.0.0.1:9229".parse().unwrap()
        );
    }

    #[test]
    fn a_worker_title_names_its_thread_id() {
        assert_eq!(title_thread_id("[worker 2] nm"), Some(2));
        assert_eq!(title_thread_id("[worker 13] "), Some(13));
        assert_eq!(title_thread_id("worker 2"), None);
        assert_eq!(title_thread_id("[worker x] a"), None);
    }

    #[test]
    fn finds_its_own_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(listening(std::process::id()).unwrap().contains(&addr));
    }
}
