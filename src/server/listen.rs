//! Listening sockets, and how connections are spread over threads.
//!
//! `Shared`: one socket per listener, accepted on one runtime (multi-thread or not).
//! `PerCore`: one current-thread runtime per worker thread, each with its own socket per
//! listener, all bound to the same address with `SO_REUSEPORT`, so the kernel spreads new
//! connections over the workers and a connection lives and dies on one thread (nginx's
//! model: no work stealing, no cross-thread wake-ups on the request path).

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// tokio's `TcpListener::bind` backlog, kept for every socket.
const BACKLOG: u32 = 1024;

/// How the gateway's connections are spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeModel {
    /// One runtime (today's `--threads N` multi-thread scheduler, current-thread for 1).
    Shared,
    /// One current-thread runtime per thread, each with its own `SO_REUSEPORT` listeners.
    PerCore,
}

/// The threads a server runs on: the model, and how many workers (`--threads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub model: RuntimeModel,
    pub threads: usize,
}

impl Layout {
    /// Everything on the caller's runtime (what `Server::bind` does).
    pub fn shared() -> Layout {
        Layout { model: RuntimeModel::Shared, threads: 1 }
    }

    /// `threads` current-thread runtimes (at least one), where the platform has
    /// `SO_REUSEPORT` load balancing (Linux); elsewhere the shared model.
    pub fn per_core(threads: usize) -> Layout {
        if cfg!(target_os = "linux") {
            Layout { model: RuntimeModel::PerCore, threads: threads.max(1) }
        } else {
            Layout::shared()
        }
    }

    /// Worker threads that each own a copy of every listener (1 in the shared model).
    pub(super) fn workers(&self) -> usize {
        match self.model {
            RuntimeModel::Shared => 1,
            RuntimeModel::PerCore => self.threads.max(1),
        }
    }
}

/// Bind `addr` once per worker: the first socket for the calling runtime, the others as
/// std sockets for the worker threads to register with their own runtime. One socket (no
/// `SO_REUSEPORT`) when there is a single worker.
pub(super) async fn bind(addr: SocketAddr, workers: usize) -> io::Result<(TcpListener, Vec<std::net::TcpListener>)> {
    if workers <= 1 {
        return Ok((TcpListener::bind(addr).await?, Vec::new()));
    }
    let addr = probe(addr)?;
    let first = reuseport_listener(addr)?;
    let mut rest = Vec::with_capacity(workers - 1);
    for _ in 1..workers {
        // Deregistered from this runtime; the worker registers it with its own.
        rest.push(reuseport_listener(addr)?.into_std()?);
    }
    Ok((first, rest))
}

/// `SO_REUSEPORT` lets any socket of the same user join the group and take a share of the
/// connections, so a second gateway started on the same port would not fail, it would
/// silently split the traffic. Bound first without it, the address must be free (a
/// listener of any kind there refuses the bind, as in the shared model); released at
/// once, the group binds where it was (port 0: the port the kernel picked).
fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.local_addr()
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(addr)?;
    socket.set_reuseaddr(true)?;
    #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos"), not(target_os = "cygwin")))]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn new_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}
