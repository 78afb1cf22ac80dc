//! Tells whether a descriptor the target blocked on is a socket, so that `read`/`write`
//! waits on sockets count as `recv`/`send` and the rest are left out.

use std::fs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    Socket,
    /// A pipe, file, eventfd, tty, ...
    Other,
    /// Closed (or the process gone) before it could be looked at.
    Gone,
}

/// Resolves descriptor `fd` of process `pid` through /proc/PID/fd (a `socket:[inode]` link).
pub fn resolve_descriptor(pid: u32, fd: u64) -> Descriptor {
    match fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(target) => classify_link(&target.to_string_lossy()),
        // NotFound: closed; anything else (EACCES on a process that exited) is gone too.
        Err(_) => Descriptor::Gone,
    }
}

fn classify_link(target: &str) -> Descriptor {
    if target.starts_with("socket:[") {
        Descriptor::Socket
    } else {
        Descriptor::Other
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, os::fd::AsRawFd as _};

    use super::*;

    #[test]
    fn links_classify() {
        assert_eq!(classify_link("socket:[123456]"), Descriptor::Socket);
        assert_eq!(classify_link("pipe:[99]"), Descriptor::Other);
        assert_eq!(classify_link("/dev/null"), Descriptor::Other);
    }

    #[test]
    fn own_descriptors_resolve() {
        let pid = std::process::id();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(resolve_descriptor(pid, listener.as_raw_fd() as u64), Descriptor::Socket);
        let file = fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(resolve_descriptor(pid, file.as_raw_fd() as u64), Descriptor::Other);
        assert_eq!(resolve_descriptor(pid, 1_000_000), Descriptor::Gone);
    }
}
