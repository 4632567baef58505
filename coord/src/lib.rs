//! Coordination between the processes of a multi-host run (one process per host, as JAX runs
//! on Cloud TPU slices): process 0 serves a small key-value store with barriers over TCP and
//! every process, process 0 included, connects to it.
//!
//! - Every connection starts with the run token (`GEMMA_XLA_RUN_TOKEN`), so a process of
//!   another run, or a stray one, cannot join or read anything.
//! - Every wait (`get`, `barrier`, connecting) ends by the run's timeout at the latest, naming
//!   what it waited for and, for a barrier, the processes that did not arrive.
//! - Each process sends a heartbeat on its own connection. A process whose connections close
//!   without saying goodbye (it exited or was killed) or that sends no heartbeat for half the
//!   timeout (it hangs, or its host is unreachable) is declared failed: every wait of every
//!   other process then ends with [`Error::HostFailed`] naming it, and [`Coordinator::check`]
//!   reports it between waits. The loss of process 0 itself ends every wait with
//!   [`Error::Lost`].
//!
//! Wire format: frames of a big-endian u32 length and a JSON header, then a u32 length and
//! the payload bytes; both bounded.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What can go wrong coordinating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator could not be reached within the timeout.
    #[error("cannot reach the coordinator at {addr} within {secs} s: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// The timeout.
        secs: u64,
        /// The last connection error.
        why: String,
    },
    /// The coordinator refused this process (a wrong run token, a process index or count that
    /// does not match the run, a process index already connected).
    #[error("the coordinator at {addr} refused process {process}: {why}")]
    Refused {
        /// host:port.
        addr: String,
        /// This process.
        process: usize,
        /// The coordinator's reason.
        why: String,
    },
    /// Another process of the run failed (exited, hung, or reported an error).
    #[error("host {process} failed: {why}")]
    HostFailed {
        /// The failed process.
        process: usize,
        /// What happened to it.
        why: String,
    },
    /// A wait ended by the timeout.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was waited for (a key, a barrier and who did not arrive).
        what: String,
        /// The timeout.
        secs: u64,
    },
    /// The coordinator (process 0) went away.
    #[error("lost the coordinator (host 0) at {addr}: {why}")]
    Lost {
        /// host:port.
        addr: String,
        /// The connection error.
        why: String,
    },
    /// The coordinator could not listen.
    #[error("cannot serve coordination on {addr}: {why}")]
    Serve {
        /// The address asked for.
        addr: String,
        /// The operating system's error.
        why: String,
    },
    /// Bad settings (environment, address, process numbers).
    #[error("{0}")]
    Invalid(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The port process 0 serves on when the address names only a host.
pub const DEFAULT_PORT: u16 = 8476;
/// The largest JSON header of a frame.
const MAX_HEADER: u32 = 64 << 10;
/// The largest payload of a frame (and of a stored value).
pub const MAX_VALUE: u32 = 256 << 20;

fn write_frame(stream: &mut TcpStream, header: &Value, payload: &[u8]) -> std::io::Result<()> {
    let h = serde_json::to_vec(header).expect("internal: a JSON value serializes");
    let mut buf = Vec::with_capacity(8 + h.len() + payload.len());
    buf.extend_from_slice(&(h.len() as u32).to_be_bytes());
    buf.extend_from_slice(&h);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    stream.write_all(&buf)?;
    stream.flush()
}

fn invalid_data(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// A u32 length, bounded by `max` before anything is allocated, then that many bytes.
fn read_block(stream: &mut TcpStream, max: u32, what: &str) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len);
    if n > max {
        return Err(invalid_data(format!("{what} of {n} bytes (at most {max})")));
    }
    let mut bytes = vec![0u8; n as usize];
    stream.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<(Value, Vec<u8>)> {
    let h = read_block(stream, MAX_HEADER, "a frame header")?;
    let header: Value = serde_json::from_slice(&h).map_err(|e| invalid_data(format!("a frame header that is not JSON: {e}")))?;
    Ok((header, read_block(stream, MAX_VALUE, "a payload")?))
}

fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[derive(Default)]
struct State {
    kv: HashMap<String, Vec<u8>>,
    barriers: HashMap<String, BTreeSet<usize>>,
    failed: Option<(usize, String)>,
    /// Per process: when its heartbeat was last seen (None: not connected yet).
    seen: Vec<Option<Instant>>,
    /// Per process: a control connection is open.
    joined: Vec<bool>,
    /// Per process: said goodbye.
    done: Vec<bool>,
}

impl State {
    fn fail(&mut self, process: usize, why: String) {
        if self.failed.is_none() && !self.done[process] {
            self.failed = Some((process, why));
        }
    }
}

struct Shared {
    token: String,
    processes: usize,
    timeout: Duration,
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// How long a process may send no heartbeat before it is declared failed: half the
    /// timeout, so that a wait of the full timeout learns of a hung host before it ends.
    /// Heartbeats come from a thread of their own, every tenth of the timeout at most 1 s
    /// apart, so a process busy compiling for minutes still sends them.
    fn silence(&self) -> Duration {
        self.timeout / 2
    }

    fn silent_why(&self) -> String {
        format!("it sent no heartbeat for {:.1} s (hung, or its host is unreachable)", self.silence().as_secs_f64())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The coordination service (run by process 0). Stops serving when dropped.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `bind` (`0.0.0.0:8476`, `127.0.0.1:0` for any free port) for the
    /// `processes` processes of the run whose token is `token`.
    pub fn start(bind: &str, token: &str, processes: usize, timeout: Duration) -> Result<Server> {
        if processes == 0 {
            return Err(Error::Invalid("a run needs at least one process".into()));
        }
        let listener = TcpListener::bind(bind).map_err(|e| Error::Serve { addr: bind.to_string(), why: e.to_string() })?;
        let addr = listener.local_addr().map_err(|e| Error::Serve { addr: bind.to_string(), why: e.to_string() })?;
        let state =
            State { seen: vec![None; processes], joined: vec![false; processes], done: vec![false; processes], ..Default::default() };
        let shared = Arc::new(Shared {
            token: token.to_string(),
            processes,
            timeout,
            state: Mutex::new(state),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let shared = shared.clone();
                        std::thread::spawn(move || serve_connection(shared, stream));
                    }
                }
            })
        };
        let monitor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    let mut s = shared.lock();
                    for p in 0..shared.processes {
                        if let Some(seen) = s.seen[p] {
                            if !s.done[p] && seen.elapsed() > shared.silence() {
                                let why = shared.silent_why();
                                s.fail(p, why);
                            }
                        }
                    }
                    if s.failed.is_some() {
                        shared.cv.notify_all();
                    }
                }
            })
        };
        Ok(Server { addr, shared, threads: vec![accept, monitor] })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until every process has said goodbye, one failed, or `timeout` passed.
    fn wait_all_done(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        while !s.done.iter().all(|&d| d) && s.failed.is_none() && Instant::now() < deadline {
            s = self.shared.cv.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok((hello, _)) = read_frame(&mut stream) else { return };
    let refuse = |stream: &mut TcpStream, why: String| {
        let _ = write_frame(stream, &json!({"error": why}), &[]);
    };
    if hello["op"] != "hello" || !same_token(hello["token"].as_str().unwrap_or(""), &shared.token) {
        return refuse(&mut stream, "wrong run token (GEMMA_XLA_RUN_TOKEN differs from the coordinator's)".into());
    }
    let (Some(process), Some(processes)) = (hello["process"].as_u64(), hello["processes"].as_u64()) else {
        return refuse(&mut stream, "no process index".into());
    };
    let process = process as usize;
    if processes as usize != shared.processes || process >= shared.processes {
        return refuse(&mut stream, format!("process {process} of {processes}, but this run has {} processes", shared.processes));
    }
    let heartbeat = hello["channel"] == "heartbeat";
    // A plugin's key-value calls come on short connections of their own.
    let plugin = hello["channel"] == "kv";
    {
        let mut s = shared.lock();
        if !heartbeat && !plugin {
            if s.joined[process] {
                drop(s);
                return refuse(&mut stream, format!("process {process} is already connected"));
            }
            s.joined[process] = true;
        }
        if heartbeat {
            s.seen[process] = Some(Instant::now());
        }
    }
    if write_frame(&mut stream, &json!({"ok": true}), &[]).is_err() {
        return;
    }
    if heartbeat {
        serve_heartbeats(&shared, process, stream)
    } else {
        serve_requests(&shared, process, stream, !plugin)
    }
}

fn serve_heartbeats(shared: &Shared, process: usize, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(shared.silence()));
    loop {
        match read_frame(&mut stream) {
            Ok((h, _)) => {
                let mut s = shared.lock();
                s.seen[process] = Some(Instant::now());
                if h["op"] == "bye" {
                    s.done[process] = true;
                    shared.cv.notify_all();
                    return;
                }
                let reply = match &s.failed {
                    Some((p, why)) => json!({"failed": p, "why": why}),
                    None => json!({"ok": true}),
                };
                drop(s);
                if write_frame(&mut stream, &reply, &[]).is_err() {
                    return;
                }
            }
            Err(e) => {
                let mut s = shared.lock();
                let why = if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                    shared.silent_why()
                } else {
                    "its connection closed without a goodbye (the process exited or was killed)".to_string()
                };
                s.fail(process, why);
                shared.cv.notify_all();
                return;
            }
        }
    }
}

fn serve_requests(shared: &Shared, process: usize, mut stream: TcpStream, control: bool) {
    let _ = stream.set_read_timeout(None);
    loop {
        let Ok((h, payload)) = read_frame(&mut stream) else {
            if control {
                let mut s = shared.lock();
                s.fail(process, "its connection closed without a goodbye (the process exited or was killed)".into());
                shared.cv.notify_all();
            }
            return;
        };
        let timeout = Duration::from_millis(h["timeout_ms"].as_u64().unwrap_or(0)).min(shared.timeout);
        let deadline = Instant::now() + timeout;
        let key = h["key"].as_str().unwrap_or("").to_string();
        let (reply, value) = match h["op"].as_str().unwrap_or("") {
            "set" => {
                shared.lock().kv.insert(key, payload);
                shared.cv.notify_all();
                (json!({"ok": true}), Vec::new())
            }
            "get" => {
                let mut s = shared.lock();
                loop {
                    if let Some(v) = s.kv.get(&key) {
                        break (json!({"ok": true}), v.clone());
                    }
                    if let Some((p, why)) = s.failed.clone() {
                        break (json!({"failed": p, "why": why}), Vec::new());
                    }
                    if Instant::now() >= deadline {
                        break (json!({"timeout": format!("the key {key:?}")}), Vec::new());
                    }
                    s = shared.cv.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
            "delete_prefix" => {
                shared.lock().kv.retain(|k, _| !k.starts_with(&key));
                (json!({"ok": true}), Vec::new())
            }
            "try_get" => match shared.lock().kv.get(&key) {
                Some(v) => (json!({"ok": true}), v.clone()),
                None => (json!({"absent": true}), Vec::new()),
            },
            "barrier" => {
                let mut s = shared.lock();
                s.barriers.entry(key.clone()).or_default().insert(process);
                shared.cv.notify_all();
                loop {
                    let arrived = s.barriers.get(&key).map_or(0, |b| b.len());
                    if arrived == shared.processes {
                        break (json!({"ok": true}), Vec::new());
                    }
                    if let Some((p, why)) = s.failed.clone() {
                        break (json!({"failed": p, "why": why}), Vec::new());
                    }
                    if Instant::now() >= deadline {
                        let here = s.barriers.get(&key).cloned().unwrap_or_default();
                        let missing: Vec<String> = (0..shared.processes).filter(|p| !here.contains(p)).map(|p| p.to_string()).collect();
                        let what = format!("the barrier {key:?} (hosts {} did not arrive)", missing.join(", "));
                        break (json!({"timeout": what}), Vec::new());
                    }
                    s = shared.cv.wait_timeout(s, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
            "fail" => {
                let why = h["why"].as_str().unwrap_or("it reported a failure").to_string();
                shared.lock().fail(process, why);
                shared.cv.notify_all();
                (json!({"ok": true}), Vec::new())
            }
            "bye" => {
                let mut s = shared.lock();
                s.done[process] = true;
                shared.cv.notify_all();
                drop(s);
                let _ = write_frame(&mut stream, &json!({"ok": true}), &[]);
                return;
            }
            other => (json!({"error": format!("unknown request {other:?}")}), Vec::new()),
        };
        if write_frame(&mut stream, &reply, &value).is_err() {
            return;
        }
    }
}

/// Where a process finds the coordinator, and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// host:port of process 0's service.
    pub address: String,
    /// The run token every connection must present.
    pub token: String,
    /// This process's index.
    pub process: usize,
    /// The number of processes.
    pub processes: usize,
    /// The longest any wait lasts (and how long a silent process is given).
    pub timeout: Duration,
}

impl Settings {
    /// From the environment (`var` looks a variable up): the address is
    /// `GEMMA_XLA_COORDINATOR` (`host:port`, or `host` for port 8476), else the first name of
    /// `TPU_WORKER_HOSTNAMES` at port 8476; the token is `GEMMA_XLA_RUN_TOKEN`, required.
    pub fn from_env(var: impl Fn(&str) -> Option<String>, process: usize, processes: usize, timeout: Duration) -> Result<Settings> {
        let address = match var("GEMMA_XLA_COORDINATOR").filter(|a| !a.trim().is_empty()) {
            Some(a) => a.trim().to_string(),
            None => match var("TPU_WORKER_HOSTNAMES").and_then(|h| h.split(',').map(str::trim).find(|h| !h.is_empty()).map(str::to_string))
            {
                Some(h) => h,
                None => return Err(Error::Invalid(
                    "a multi-host run needs the coordinator's address: set GEMMA_XLA_COORDINATOR=host:port (`gemma-xla launch` sets it), \
                         or run on a TPU VM, whose TPU_WORKER_HOSTNAMES names host 0"
                        .into(),
                )),
            },
        };
        let address = with_port(&address)?;
        let token = var("GEMMA_XLA_RUN_TOKEN").filter(|t| !t.is_empty()).ok_or_else(|| {
            Error::Invalid(
                "a multi-host run needs GEMMA_XLA_RUN_TOKEN, the same secret on every host (`gemma-xla launch` sets it), so that no stray process can join"
                    .into(),
            )
        })?;
        if token.len() > 1024 {
            return Err(Error::Invalid(format!("GEMMA_XLA_RUN_TOKEN has {} bytes; at most 1024", token.len())));
        }
        if timeout.is_zero() {
            return Err(Error::Invalid("the coordination timeout must be positive".into()));
        }
        if process >= processes {
            return Err(Error::Invalid(format!("process {process} is not below the process count {processes}")));
        }
        Ok(Settings { address, token, process, processes, timeout })
    }
}

/// `host:port`, with the default port added to a bare host (IPv6 hosts in brackets).
fn with_port(address: &str) -> Result<String> {
    let bare_v6 = address.matches(':').count() > 1 && !address.starts_with('[');
    if bare_v6 {
        return Err(Error::Invalid(format!("coordinator address {address:?}: write an IPv6 host in brackets, [addr]:port")));
    }
    let has_port = address.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
    if !has_port {
        return Ok(format!("{address}:{DEFAULT_PORT}"));
    }
    let port = address.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    port.parse::<u16>()
        .map_err(|_| Error::Invalid(format!("coordinator address {address:?}: the port {port:?} is not a number below 65536")))?;
    Ok(address.to_string())
}

/// The store as a plugin uses it (`PJRT_Client_Create`'s key-value callbacks, called from the
/// plugin's threads): each call opens its own short connection, so that a plugin thread
/// waiting for a key never holds up this process's own requests.
#[derive(Debug, Clone)]
pub struct KvClient {
    settings: Settings,
}

impl KvClient {
    fn request(&self, header: Value, payload: &[u8], wait: Duration) -> Result<(Value, Vec<u8>)> {
        let mut stream = connect(&self.settings, "kv", Instant::now() + self.settings.timeout)?;
        exchange(&mut stream, &self.settings.address, &header, payload, wait)
    }

    /// The value under `key`, waiting up to `timeout` (at most the run's).
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let wait = timeout.min(self.settings.timeout);
        self.request(json!({"op": "get", "key": key, "timeout_ms": millis(wait)}), &[], wait).map(|(_, v)| v)
    }

    /// The value under `key` if some process has set it.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let (reply, v) = self.request(json!({"op": "try_get", "key": key}), &[], Duration::ZERO)?;
        Ok(if reply["absent"] == true { None } else { Some(v) })
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        if value.len() as u64 > MAX_VALUE as u64 {
            return Err(Error::Invalid(format!("a value of {} bytes for {key:?}; at most {MAX_VALUE}", value.len())));
        }
        self.request(json!({"op": "set", "key": key}), value, Duration::ZERO).map(|_| ())
    }
}

/// One process's connection to the run's coordination service; process 0 also serves it.
pub struct Coordinator {
    settings: Settings,
    control: Mutex<TcpStream>,
    failure: Arc<Mutex<Option<Error>>>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
    server: Option<Server>,
    closed: bool,
}

/// One request to the service at `addr` and its reply: a host's failure, a timeout (after
/// `wait`, which the service answers by) and a refused request become errors.
fn exchange(stream: &mut TcpStream, addr: &str, header: &Value, payload: &[u8], wait: Duration) -> Result<(Value, Vec<u8>)> {
    // Allow for the network on top of the service's own wait.
    let _ = stream.set_read_timeout(Some(wait + Duration::from_secs(10)));
    let lost = |e: std::io::Error| Error::Lost { addr: addr.to_string(), why: e.to_string() };
    write_frame(stream, header, payload).map_err(lost)?;
    let (reply, value) = read_frame(stream).map_err(lost)?;
    if let Some(e) = failure_in(&reply) {
        return Err(e);
    }
    if let Some(what) = reply["timeout"].as_str() {
        return Err(Error::Timeout { what: what.to_string(), secs: wait.as_secs() });
    }
    if let Some(e) = reply["error"].as_str() {
        return Err(Error::Invalid(format!("the coordinator: {e}")));
    }
    Ok((reply, value))
}

/// The failure of a host that the service's reply reports, if any.
fn failure_in(reply: &Value) -> Option<Error> {
    let p = reply["failed"].as_u64()?;
    Some(Error::HostFailed { process: p as usize, why: reply["why"].as_str().unwrap_or("").to_string() })
}

fn connect(settings: &Settings, channel: &str, deadline: Instant) -> Result<TcpStream> {
    let addr = &settings.address;
    let mut last: String;
    loop {
        let attempt = (|| -> std::io::Result<TcpStream> {
            let target = addr
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name resolves to no address"))?;
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50));
            TcpStream::connect_timeout(&target, left.min(Duration::from_secs(5)))
        })();
        match attempt {
            Ok(mut stream) => {
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(settings.timeout));
                let hello = json!({"op": "hello", "token": settings.token, "process": settings.process, "processes": settings.processes, "channel": channel});
                let lost = |e: std::io::Error| Error::Lost { addr: addr.clone(), why: e.to_string() };
                write_frame(&mut stream, &hello, &[]).map_err(lost)?;
                let (reply, _) = read_frame(&mut stream).map_err(lost)?;
                if let Some(why) = reply["error"].as_str() {
                    return Err(Error::Refused { addr: addr.clone(), process: settings.process, why: why.to_string() });
                }
                return Ok(stream);
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(Error::Connect { addr: addr.clone(), secs: settings.timeout.as_secs(), why: last });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Coordinator {
    /// Joins the run: process 0 first starts the service on the address's port (all
    /// interfaces), then every process connects, retrying until the timeout while process 0
    /// is not up yet, and starts its heartbeat.
    pub fn join(settings: Settings) -> Result<Coordinator> {
        let server = if settings.process == 0 {
            let port = settings.address.rsplit_once(':').map(|(_, p)| p).unwrap_or("0");
            Some(Server::start(&format!("0.0.0.0:{port}"), &settings.token, settings.processes, settings.timeout)?)
        } else {
            None
        };
        Coordinator::connect_to(settings, server)
    }

    /// Connects to an already running service (tests start a [`Server`] themselves).
    pub fn connect_to(mut settings: Settings, server: Option<Server>) -> Result<Coordinator> {
        if let Some(s) = &server {
            // Process 0 talks to its own service over loopback.
            settings.address = format!("127.0.0.1:{}", s.addr().port());
        }
        let deadline = Instant::now() + settings.timeout;
        let control = connect(&settings, "control", deadline)?;
        let mut beat = connect(&settings, "heartbeat", deadline)?;
        let failure: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let interval = (settings.timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let heartbeat = {
            let (failure, stop, addr) = (failure.clone(), stop.clone(), settings.address.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let result = write_frame(&mut beat, &json!({"op": "ping"}), &[]).and_then(|()| read_frame(&mut beat));
                    let seen = match result {
                        Ok((reply, _)) => failure_in(&reply),
                        Err(e) => Some(Error::Lost { addr: addr.clone(), why: e.to_string() }),
                    };
                    if let Some(e) = seen {
                        let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                        if f.is_none() {
                            *f = Some(e);
                        }
                        return;
                    }
                    let slept = Instant::now();
                    while slept.elapsed() < interval && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                // A goodbye on the heartbeat connection: this process ended cleanly.
                let _ = write_frame(&mut beat, &json!({"op": "bye"}), &[]);
                let _ = beat.shutdown(Shutdown::Both);
            })
        };
        Ok(Coordinator { settings, control: Mutex::new(control), failure, stop, heartbeat: Some(heartbeat), server, closed: false })
    }

    /// This process's index.
    pub fn process(&self) -> usize {
        self.settings.process
    }

    /// A handle on the store for a plugin's key-value callbacks.
    pub fn kv_client(&self) -> KvClient {
        KvClient { settings: self.settings.clone() }
    }

    /// The number of processes.
    pub fn processes(&self) -> usize {
        self.settings.processes
    }

    /// The longest any wait lasts.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// A failure of another process (or the loss of the coordinator) the heartbeat has seen.
    pub fn check(&self) -> Result<()> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*f {
            Some(Error::HostFailed { process, why }) => Err(Error::HostFailed { process: *process, why: why.clone() }),
            Some(Error::Lost { addr, why }) => Err(Error::Lost { addr: addr.clone(), why: why.clone() }),
            Some(other) => Err(Error::Invalid(other.to_string())),
            None => Ok(()),
        }
    }

    fn request(&self, header: Value, payload: &[u8]) -> Result<(Value, Vec<u8>)> {
        self.check()?;
        let mut stream = self.control.lock().unwrap_or_else(|p| p.into_inner());
        exchange(&mut stream, &self.settings.address, &header, payload, self.settings.timeout)
    }

    /// Stores `value` under `key` (visible to every process).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        if value.len() as u64 > MAX_VALUE as u64 {
            return Err(Error::Invalid(format!("a value of {} bytes for {key:?}; at most {MAX_VALUE}", value.len())));
        }
        self.request(json!({"op": "set", "key": key}), value).map(|_| ())
    }

    /// The value under `key`, waiting (up to the timeout) until some process sets it.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.request(json!({"op": "get", "key": key, "timeout_ms": millis(self.settings.timeout)}), &[]).map(|(_, v)| v)
    }

    /// Waits (up to the timeout) until every process has reached the barrier `name`; a
    /// barrier name is used once per run.
    pub fn barrier(&self, name: &str) -> Result<()> {
        self.request(json!({"op": "barrier", "key": name, "timeout_ms": millis(self.settings.timeout)}), &[]).map(|_| ())
    }

    /// Every process publishes `value` under `name` and receives every process's, in process
    /// order (an all-gather through the store).
    pub fn all_gather(&self, name: &str, value: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.set(&format!("{name}/{}", self.settings.process), value)?;
        (0..self.settings.processes).map(|p| self.get(&format!("{name}/{p}"))).collect()
    }

    /// Removes every key that starts with `prefix` (values no process will read again).
    pub fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.request(json!({"op": "delete_prefix", "key": prefix}), &[]).map(|_| ())
    }

    /// Tells every process that this one failed (they stop, naming it and `why`).
    pub fn fail(&self, why: &str) -> Result<()> {
        self.request(json!({"op": "fail", "why": why}), &[]).map(|_| ())
    }

    /// Leaves the run cleanly. Process 0 keeps serving until every process has left (or one
    /// failed, or the timeout passed).
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        {
            let mut stream = self.control.lock().unwrap_or_else(|p| p.into_inner());
            let _ = write_frame(&mut stream, &json!({"op": "bye"}), &[]);
            let _ = read_frame(&mut stream);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        if let Some(server) = self.server.take() {
            server.wait_all_done(self.settings.timeout);
        }
        Ok(())
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if !self.closed {
            // Leaving without a goodbye: the others learn that this process failed.
            if let Ok(s) = self.control.lock() {
                let _ = s.shutdown(Shutdown::Both);
            }
            self.stop.store(true, Ordering::SeqCst);
            if let Some(h) = self.heartbeat.take() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(with_port("t-0").unwrap(), "t-0:8476");
        assert_eq!(with_port("10.0.0.2:1234").unwrap(), "10.0.0.2:1234");
        assert_eq!(with_port("[::1]").unwrap(), "[::1]:8476");
        assert_eq!(with_port("[::1]:99").unwrap(), "[::1]:99");
        assert!(with_port("h:x").unwrap_err().to_string().contains("port \"x\""));
        assert!(with_port("::1").is_err());
    }

    #[test]
    fn settings_come_from_the_environment() {
        let env =
            |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let t = Duration::from_secs(5);
        let s = Settings::from_env(env(&[("TPU_WORKER_HOSTNAMES", "w-0,w-1"), ("GEMMA_XLA_RUN_TOKEN", "x")]), 1, 2, t).unwrap();
        assert_eq!(s.address, "w-0:8476");
        let s = Settings::from_env(
            env(&[("TPU_WORKER_HOSTNAMES", "w-0,w-1"), ("GEMMA_XLA_COORDINATOR", "c:7"), ("GEMMA_XLA_RUN_TOKEN", "x")]),
            1,
            2,
            t,
        )
        .unwrap();
        assert_eq!(s.address, "c:7");
        let e = Settings::from_env(env(&[("GEMMA_XLA_COORDINATOR", "c:7")]), 0, 2, t).unwrap_err();
        assert!(e.to_string().contains("GEMMA_XLA_RUN_TOKEN"), "{e}");
        let e = Settings::from_env(env(&[("GEMMA_XLA_RUN_TOKEN", "x")]), 0, 2, t).unwrap_err();
        assert!(e.to_string().contains("GEMMA_XLA_COORDINATOR"), "{e}");
    }
}
