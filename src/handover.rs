//! Listening sockets handed from a running levee to its successor (`run --upgrade`)
//! over a unix socket: one message, the listeners' keys as text and their descriptors
//! as `SCM_RIGHTS` (the `sendfd` crate wraps the ancillary-data calls).
//!
//! The successor binds the socket and waits; the running levee connects on SIGQUIT and
//! sends. Both then hold the listeners, and the old one drains and exits.

use std::io;
use std::os::unix::io::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use sendfd::{RecvWithFd, SendWithFd};

/// Most listeners one handover carries.
const MAX_FDS: usize = 64;
/// Largest key list (the keys are socket addresses, one a line).
const MAX_KEYS_BYTES: usize = 64 * 1024;
/// How long the sender keeps trying to reach a successor that is not listening yet.
const CONNECT_FOR: Duration = Duration::from_secs(5);

/// Listening descriptors by key (`addr` or `admin:addr`).
#[derive(Debug, Default)]
pub struct Fds {
    entries: Vec<(String, RawFd)>,
}

impl Fds {
    pub fn add(&mut self, key: String, fd: RawFd) {
        self.entries.push((key, fd));
    }

    pub fn get(&self, key: &str) -> Option<&RawFd> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, fd)| fd)
    }

    /// Sends every descriptor to the successor waiting on `path`.
    pub fn send_to(&self, path: &Path) -> io::Result<usize> {
        if self.entries.len() > MAX_FDS {
            return Err(io::Error::other("too many listeners to hand over"));
        }
        let deadline = std::time::Instant::now() + CONNECT_FOR;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("no levee waiting on {} ({e})", path.display()),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
        let text = keys.join("\n");
        let fds: Vec<RawFd> = self.entries.iter().map(|(_, fd)| *fd).collect();
        stream.send_with_fd(text.as_bytes(), &fds)?;
        Ok(fds.len())
    }

    /// Waits on `path` for the running levee's descriptors (it sends them on SIGQUIT).
    pub fn receive_on(path: &Path) -> io::Result<Fds> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (stream, _) = listener.accept()?;
        let _ = std::fs::remove_file(path);
        let mut bytes = vec![0u8; MAX_KEYS_BYTES];
        let mut fds = [0 as RawFd; MAX_FDS];
        let (n, nfds) = stream.recv_with_fd(&mut bytes, &mut fds)?;
        let text = std::str::from_utf8(&bytes[..n])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "handover keys not UTF-8"))?;
        let keys: Vec<&str> = if text.is_empty() {
            Vec::new()
        } else {
            text.split('\n').collect()
        };
        if keys.len() != nfds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("handover sent {} keys for {nfds} descriptors", keys.len()),
            ));
        }
        Ok(Fds {
            entries: keys
                .into_iter()
                .map(String::from)
                .zip(fds[..nfds].iter().copied())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn listeners_cross_a_unix_socket_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.sock");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let receiver = {
            let path = path.clone();
            std::thread::spawn(move || Fds::receive_on(&path))
        };
        let mut fds = Fds::default();
        fds.add(addr.to_string(), l.as_raw_fd());
        assert_eq!(fds.send_to(&path).unwrap(), 1);
        let got = receiver.join().unwrap().unwrap();
        let fd = *got.get(&addr.to_string()).expect("key arrives");
        use std::os::unix::io::FromRawFd;
        // SAFETY: the descriptor arrived for this test alone and is wrapped once.
        let taken = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        assert_eq!(taken.local_addr().unwrap(), addr);
    }
}
