//! systemd readiness and stop notifications (`Type=notify` units): a
//! datagram to the socket named by `NOTIFY_SOCKET`, as sd_notify(3)
//! describes. Without that variable (not started by systemd) nothing is
//! sent. A failure to notify is logged, never fatal: the service itself
//! works, systemd only learns later that it is up.

use std::os::unix::net::UnixDatagram;

/// Tells systemd the service is ready (its listeners are bound), with a
/// one-line status shown by `systemctl status`.
pub(crate) fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}\n",
        std::process::id()
    ));
}

/// Tells systemd the service is stopping (the shutdown notice went out).
pub(crate) fn stopping(status: &str) {
    send(&format!("STOPPING=1\nSTATUS={status}\n"));
}

fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, message.as_bytes()) {
        tracing::warn!(
            socket = ?path,
            error = %e,
            "could not notify systemd; the unit may time out waiting for readiness"
        );
    }
}

/// Sends one datagram to a path or, for a name starting with `@`, to the
/// Linux abstract socket of that name.
fn send_to(path: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message, &addr)
    } else {
        socket.send_to(message, std::path::Path::new(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("holdfast-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).expect("bind");
        send_to(path.as_os_str(), b"READY=1\n").expect("send");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\n");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("holdfast-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let receiver = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send_to(std::ffi::OsStr::new(&format!("@{name}")), b"STOPPING=1\n").expect("send");
        let n = receiver.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }
}
