//! Hitless restart and upgrade: a new `ward run` takes the listening sockets of the running
//! one over a Unix socket (SCM_RIGHTS, as Envoy's hot restart and Pingora's graceful upgrade
//! do), serves on them, and then tells the old one, which stops accepting, drains and exits.
//!
//! The sockets themselves never close: until the new process says it is ready the old one
//! accepts as before, and from then on the new one accepts from the same queues. A connection
//! or datagram arriving during the upgrade is therefore never refused, and the datapath's
//! listener lookup (`ward_listeners`, by port) keeps finding the same socket.
//!
//! The exchange, on `<admin socket>.handover` (mode 0600, root's):
//! 1. the new process connects;
//! 2. the old one sends one JSON line naming the sockets (`Offer`), with their descriptors;
//! 3. the new one starts everything on them and writes `ready`;
//! 4. the old one drains (as on SIGTERM) and exits without removing the sockets' paths.
//!
//! If the new process fails before `ready`, the old one never stopped serving and offers again
//! to the next comer.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// The exchange's version; a new process refuses an offer of another one.
const PROTOCOL: u32 = 1;
/// Most sockets one offer carries (HTTP, DNS UDP and TCP, Kafka, metrics).
const MAX_SOCKETS: usize = 8;
/// How long the old process waits for the new one to be ready before serving on alone.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The handover socket of the `ward run` whose admin socket is `admin`.
pub fn socket_path(admin: &Path) -> PathBuf {
    let mut p = admin.as_os_str().to_owned();
    p.push(".handover");
    PathBuf::from(p)
}

/// What the old process sends, followed by the descriptors in `sockets` order.
#[derive(Serialize, Deserialize, Debug)]
struct Offer {
    protocol: u32,
    /// The old process's version and pid, for the log.
    version: String,
    pid: u32,
    sockets: Vec<Named>,
}

/// One socket offered: what it is (`http`, `dns_udp`, `dns_tcp`, `kafka`, `metrics`) and its
/// port.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub port: u16,
}

/// The sockets taken over from a running `ward run`, until [`Inherited::ready`].
pub struct Inherited {
    sockets: Vec<(Named, OwnedFd)>,
    stream: UnixStream,
    /// The old process's pid and version.
    pub pid: u32,
    pub version: String,
}

impl Inherited {
    /// The names and ports offered.
    pub fn offered(&self) -> Vec<Named> {
        self.sockets.iter().map(|(n, _)| n.clone()).collect()
    }

    fn take(&mut self, name: &str, port: u16) -> Option<OwnedFd> {
        let i = self
            .sockets
            .iter()
            .position(|(n, _)| n.name == name && n.port == port)?;
        Some(self.sockets.swap_remove(i).1)
    }

    /// The TCP listener `name` on `port`, if it was offered.
    pub fn tcp(&mut self, name: &str, port: u16) -> Option<std::net::TcpListener> {
        self.take(name, port).map(std::net::TcpListener::from)
    }

    /// The UDP socket `name` on `port`, if it was offered.
    pub fn udp(&mut self, name: &str, port: u16) -> Option<std::net::UdpSocket> {
        self.take(name, port).map(std::net::UdpSocket::from)
    }

    /// Tells the old process this one serves: it stops accepting, drains and exits. Sockets
    /// offered but not taken (a port the new config no longer has) close here. The returned
    /// stream says `drained` once the old process has drained and saved its FQDN checkpoint
    /// (or ends, if it died).
    pub fn ready(mut self) -> std::io::Result<Drained> {
        self.stream.write_all(b"ready\n")?;
        self.stream.flush()?;
        Ok(Drained(self.stream))
    }
}

/// The old process's side of a finished handover, until it has drained.
pub struct Drained(UnixStream);

impl Drained {
    /// Waits (up to `timeout`) for the old process to have drained; `true` when it said so.
    pub fn wait(self, timeout: Duration) -> bool {
        let _ = self.0.set_read_timeout(Some(timeout));
        let mut line = String::new();
        BufReader::new(&self.0).read_line(&mut line).is_ok() && line.trim_end() == "drained"
    }
}

/// The new process's side of a finished handover, kept by the old one until it has drained.
pub struct Successor(UnixStream);

impl Successor {
    /// Tells the new process this one has drained (its FQDN checkpoint is written).
    pub fn drained(mut self) {
        let _ = self.0.write_all(b"drained\n");
    }
}

/// Takes the sockets of the `ward run` listening on `path`. `Ok(None)` when none answers: a
/// first start, or the previous process is gone.
pub fn take(path: &Path) -> anyhow::Result<Option<Inherited>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (n, raw) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .context("receiving the handover offer")?;
        let mut raw = Vec::new();
        for c in msg.cmsgs().context("reading the handover descriptors")? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                raw.extend(fds);
            }
        }
        (msg.bytes, raw)
    };
    // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing else
    // refers to them, so each is owned exactly once, here.
    let fds: Vec<OwnedFd> = raw
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let mut line = buf[..n].to_vec();
    let mut reader = BufReader::new(&stream);
    if !line.contains(&b'\n') {
        reader
            .read_until(b'\n', &mut line)
            .context("reading the handover offer")?;
    }
    let offer: Offer = serde_json::from_slice(line.trim_ascii_end())
        .context("the running ward's handover offer does not parse")?;
    if offer.protocol != PROTOCOL {
        bail!(
            "the running ward (pid {}, {}) offers handover protocol {}, this one speaks {PROTOCOL}",
            offer.pid,
            offer.version,
            offer.protocol
        );
    }
    if offer.sockets.len() != fds.len() {
        bail!(
            "the handover offer names {} sockets but carries {} descriptors",
            offer.sockets.len(),
            fds.len()
        );
    }
    stream.set_read_timeout(None)?;
    Ok(Some(Inherited {
        sockets: offer.sockets.into_iter().zip(fds).collect(),
        stream,
        pid: offer.pid,
        version: offer.version,
    }))
}

/// Binds the handover socket at `path` (replacing a previous process's path), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Offers `sockets` to whoever connects to `listener` until one says `ready`, then calls
/// `handed_over` with its pid and the connection to it, and returns. Runs on its own thread.
pub fn offer(
    listener: UnixListener,
    sockets: Vec<(Named, OwnedFd)>,
    handed_over: impl FnOnce(Option<u32>, Successor),
) {
    let names: Vec<Named> = sockets.iter().map(|(n, _)| n.clone()).collect();
    let offer = Offer {
        protocol: PROTOCOL,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        sockets: names,
    };
    let mut line = serde_json::to_vec(&offer).unwrap_or_default();
    line.push(b'\n');
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket accept failed");
                continue;
            }
        };
        // Only the socket's owner can connect (mode 0600); the pid is for the log.
        let pid = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
            .ok()
            .and_then(|c| u32::try_from(c.pid()).ok());
        let sent = sendmsg::<()>(
            stream.as_fd().as_raw_fd(),
            &[IoSlice::new(&line)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sending the listening sockets failed; still serving");
            continue;
        }
        tracing::info!(
            ?pid,
            sockets = offer.sockets.len(),
            "listening sockets offered to a new ward"
        );
        let _ = stream.set_read_timeout(Some(READY_TIMEOUT));
        let mut answer = String::new();
        match BufReader::new(&stream).read_line(&mut answer) {
            Ok(_) if answer.trim_end() == "ready" => {
                handed_over(pid, Successor(stream));
                return;
            }
            _ => tracing::warn!(
                ?pid,
                "the new ward did not become ready; this one goes on serving"
            ),
        }
    }
}
