//! A real HTTP receiver for webhooks, on a local port: a plain TCP listener that records each
//! request's headers and raw body and answers with the statuses a test scripts; and the
//! signature check a receiver makes, with the `hmac` crate.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest a receiver waits for one request (retries take seconds; CI is loaded).
pub const LONG_WAIT: Duration = Duration::from_secs(20);
/// How long the receiver takes to answer a request it stalls: past a 1 s timeout.
pub const STALL: Duration = Duration::from_millis(2500);
/// How long the receiver takes to answer a request it answers slowly: within a 1 s timeout.
pub const SLOW: Duration = Duration::from_millis(600);

/// What the receiver answers to one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Answers 200, but only after [`STALL`]: the hub has given up by then.
    Stall,
    /// Answers 200 after [`SLOW`]: within the timeout, with time to act meanwhile.
    Slow,
}

/// One request as the receiver got it.
#[derive(Debug)]
pub struct Request {
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    pub fn delivery(&self) -> String {
        self.header("x-hub-delivery").to_owned()
    }

    pub fn timestamp(&self) -> u64 {
        self.header("x-hub-timestamp")
            .parse()
            .expect("a numeric timestamp")
    }

    /// The events in the body, in order.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON body");
        body["events"].as_array().cloned().expect("an events array")
    }

    /// The `id`s of the events in the body, in order.
    pub fn event_ids(&self) -> Vec<String> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).expect("a JSON body");
        body["events"]
            .as_array()
            .expect("an events array")
            .iter()
            .map(|e| e["id"].as_str().expect("an event id").to_owned())
            .collect()
    }
}

/// A real HTTP/1.1 server on a local port: one thread per connection, `Connection: close`.
pub struct Receiver {
    addr: SocketAddr,
    /// Replies for the next requests, in order; once empty, every request gets 200.
    script: Arc<Mutex<VecDeque<Reply>>>,
    requests: tokio::sync::mpsc::UnboundedReceiver<Request>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").expect("a local port"))
    }

    /// A receiver on `port`, which a test kept closed until now.
    pub fn start_on(port: u16) -> Receiver {
        Receiver::on(
            TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("port {port} could not be bound again: {e}")),
        )
    }

    pub fn on(listener: TcpListener) -> Receiver {
        let addr = listener.local_addr().expect("the listener's address");
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        let replies = script.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tx, replies) = (tx.clone(), replies.clone());
                std::thread::spawn(move || serve(stream, &tx, &replies));
            }
        });
        Receiver {
            addr,
            script,
            requests,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// A request that arrived and was not read yet, if any (without waiting).
    pub fn try_next(&mut self) -> Option<Request> {
        self.requests.try_recv().ok()
    }

    /// Forgets the replies still scripted and the requests not yet read.
    pub fn reset(&mut self) {
        self.script.lock().expect("the script").clear();
        while self.requests.try_recv().is_ok() {}
    }

    pub fn script(&self, replies: &[Reply]) {
        self.script
            .lock()
            .expect("the script")
            .extend(replies.iter().copied());
    }

    /// The next request, within [`LONG_WAIT`].
    pub async fn next(&mut self) -> Request {
        tokio::time::timeout(LONG_WAIT, self.requests.recv())
            .await
            .expect("a webhook request within the wait")
            .expect("the receiver is running")
    }

    /// The requests that bring the next `n` events (or more, in a batch's tail).
    pub async fn events_of_next(&mut self, n: usize) -> Vec<Request> {
        let mut requests = Vec::new();
        let mut seen = 0;
        while seen < n {
            let request = self.next().await;
            seen += request.events().len();
            requests.push(request);
        }
        requests
    }

    /// The requests until the events with these ids all arrived (a replay may split them over
    /// several batches).
    pub async fn until_events(&mut self, ids: &[String]) -> Vec<Request> {
        let mut seen = Vec::new();
        let mut requests = Vec::new();
        while seen.len() < ids.len() {
            let request = self.next().await;
            seen.extend(request.event_ids());
            requests.push(request);
        }
        assert_eq!(seen, ids, "the events, in order, nothing else");
        requests
    }
}

/// Reads one request, reports it, answers it as scripted.
pub fn serve(
    mut stream: TcpStream,
    tx: &tokio::sync::mpsc::UnboundedSender<Request>,
    replies: &Mutex<VecDeque<Reply>>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut data = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = replies
        .lock()
        .expect("the script")
        .pop_front()
        .unwrap_or(Reply::Status(200));
    let _ = tx.send(Request { headers, body });
    let status = match reply {
        Reply::Status(status) => status,
        Reply::Stall => {
            std::thread::sleep(STALL);
            200
        }
        Reply::Slow => {
            std::thread::sleep(SLOW);
            200
        }
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// A local port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a local port");
    listener.local_addr().expect("its address").port()
}

/// Whether `signature` is `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, checked
/// with the `hmac` crate directly over the raw bytes received.
pub fn verifies(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// A real https receiver: a certificate authority and a `localhost` server certificate made
/// with the `openssl` command in a temporary directory, served by Python's `http.server` over
/// `ssl` on a port it chose. Every request's body is one line on its stdout; it answers 204.
pub struct HttpsReceiver {
    child: std::process::Child,
    pub port: u16,
    /// The CA certificate (PEM) a client must trust to reach it.
    pub ca: std::path::PathBuf,
    pub bodies: super::Lines,
    dir: std::path::PathBuf,
}

impl HttpsReceiver {
    pub fn start() -> HttpsReceiver {
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!(
            "realtime-hub-https-receiver-{}-{}",
            std::process::id(),
            closed_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .expect("the extensions file");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=realtime-hub test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let server = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print(body.decode(), flush=True)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain("server.pem", "server.key")
httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
print("port", httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", server])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let bodies = super::Lines::read_from(child.stdout.take().expect("stdout pipe"));
        let line = bodies
            .wait_for(LONG_WAIT, |l| l.starts_with("port "))
            .expect("the https receiver says its port");
        let port = line
            .trim_start_matches("port ")
            .trim()
            .parse()
            .expect("a port number");
        HttpsReceiver {
            child,
            port,
            ca: dir.join("ca.pem"),
            bodies,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.port)
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
