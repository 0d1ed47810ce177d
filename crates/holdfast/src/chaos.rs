//! An in-process TCP fault proxy on 127.0.0.1: every link it forwards can be
//! reset (RST), blackholed (bytes stop, sockets stay open), delayed, or cut
//! after N more bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A fault applied to the links open at the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close both sides with RST.
    Reset,
    /// Stop forwarding both ways; keep the sockets open.
    Blackhole,
    /// Delay every chunk by this long.
    Delay(Duration),
    /// Forward this many more bytes (each direction), then blackhole.
    CutAfter(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkMode {
    Forward,
    Delay(Duration),
    CutAfter(u64),
    Blackhole,
    Reset,
}

struct Link {
    mode: watch::Sender<LinkMode>,
    tasks: Vec<JoinHandle<()>>,
}

/// The proxy.
pub struct Proxy {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
    accept: JoinHandle<()>,
    /// Faults injected.
    pub faults: AtomicU64,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (an ephemeral port) to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        Proxy::bind(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            upstream,
        )
        .await
    }

    /// Starts a proxy listening on `listen`, forwarding to `upstream`.
    pub async fn bind(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let l2 = links.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (tx, rx) = watch::channel(LinkMode::Forward);
                let down = Arc::new(down);
                let up = Arc::new(up);
                let t1 = tokio::spawn(pump(down.clone(), up.clone(), rx.clone()));
                let t2 = tokio::spawn(pump(up, down, rx));
                let mut links = lock(&l2);
                links.retain(|l| !l.tasks.iter().all(JoinHandle::is_finished));
                links.push(Link {
                    mode: tx,
                    tasks: vec![t1, t2],
                });
            }
        });
        Ok(Proxy {
            addr,
            links,
            accept,
            faults: AtomicU64::new(0),
        })
    }

    /// Where initiators connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies a fault to every open link; returns how many links it hit
    /// (a fault with no open link is not counted as injected).
    pub fn inject(&self, fault: Fault) -> usize {
        let mode = match fault {
            Fault::Reset => LinkMode::Reset,
            Fault::Blackhole => LinkMode::Blackhole,
            Fault::Delay(d) => LinkMode::Delay(d),
            Fault::CutAfter(n) => LinkMode::CutAfter(n),
        };
        let mut hit = 0;
        for l in lock(&self.links).iter() {
            if !l.tasks.iter().all(JoinHandle::is_finished) && l.mode.send(mode).is_ok() {
                hit += 1;
            }
        }
        if hit > 0 {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for l in lock(&self.links).iter() {
            let _ = l.mode.send(LinkMode::Reset);
            for t in &l.tasks {
                t.abort();
            }
        }
    }
}

/// Locks the link list; a panicked holder cannot leave it inconsistent.
fn lock(links: &Mutex<Vec<Link>>) -> std::sync::MutexGuard<'_, Vec<Link>> {
    links.lock().unwrap_or_else(|e| e.into_inner())
}

fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn pump(from: Arc<TcpStream>, to: Arc<TcpStream>, mut mode: watch::Receiver<LinkMode>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut budget: Option<u64> = None;
    loop {
        let current = *mode.borrow_and_update();
        match current {
            LinkMode::Reset => {
                reset(&from);
                reset(&to);
                // Dropping our Arcs closes the sockets once both pumps end.
                return;
            }
            LinkMode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            LinkMode::CutAfter(n) if budget.is_none() => budget = Some(n),
            _ => {}
        }
        tokio::select! {
            r = from.readable() => {
                if r.is_err() { return; }
                let n = match from.try_read(&mut buf) {
                    Ok(0) => { let _ = shutdown_write(&to).await; return; }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => { reset(&to); return; }
                };
                let mut n = n;
                if let Some(b) = budget.as_mut() {
                    n = n.min(*b as usize);
                    *b -= n as u64;
                }
                if let LinkMode::Delay(d) = current {
                    tokio::time::sleep(d).await;
                }
                if write_all(&to, &buf[..n]).await.is_err() {
                    return;
                }
                if budget == Some(0) {
                    // The cut: nothing more flows, the sockets stay open.
                    loop {
                        if mode.changed().await.is_err() { return; }
                        if *mode.borrow() == LinkMode::Reset { reset(&from); reset(&to); return; }
                    }
                }
            }
            r = mode.changed() => { if r.is_err() { return; } }
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn shutdown_write(s: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}
