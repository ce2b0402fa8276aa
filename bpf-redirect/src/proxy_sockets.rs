//! The proxy's upstream sockets: an LRU hash of socket cookies
//! (`ward_proxy_sockets`). The to-endpoint program honours
//! `SO_MARK = MARK_PROXY_UPSTREAM` only for packets whose socket cookie is
//! registered here — the mark alone can be set by any host socket with
//! CAP_NET_RAW or CAP_NET_ADMIN.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, SockHash};

use crate::{common::map_names, Error, Result};

/// `SO_COOKIE` (asm-generic/socket.h); not exported by every libc version, and nix 0.30 has
/// no `sockopt` for it, so `socket_cookie` calls getsockopt itself.
const SO_COOKIE: libc::c_int = 57;

/// The kernel's socket cookie of `fd` (`getsockopt(SOL_SOCKET, SO_COOKIE)`):
/// unique per socket for the lifetime of the system, never reused.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, output buffer of the length we pass.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Handle on the pinned `ward_proxy_sockets` map. The proxy registers every
/// upstream socket after `socket()` + `SO_MARK` and before `connect()`, and
/// removes it when the socket is closed. Opened from the pin, so it needs no
/// [`crate::Datapath`] and can live in the proxy process.
pub struct ProxySockets {
    map: BpfHashMap<MapData, u64, u8>,
}

impl std::fmt::Debug for ProxySockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySockets").finish_non_exhaustive()
    }
}

impl ProxySockets {
    /// Opens `<pin_root>/ward_proxy_sockets` (created by [`crate::Datapath::open`]).
    pub fn open(pin_root: impl AsRef<Path>) -> Result<Self> {
        let name = map_names::PROXY_SOCKETS;
        let path = pin_root.as_ref().join(name);
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, source })?;
        let map = Map::from_map_data(data).map_err(|source| Error::Map { name, source })?;
        let map = BpfHashMap::try_from(map).map_err(|source| Error::Map { name, source })?;
        Ok(Self { map })
    }

    /// Registers a socket cookie (see [`socket_cookie`]).
    pub fn insert(&mut self, cookie: u64) -> Result<()> {
        self.map
            .insert(cookie, 1u8, 0)
            .map_err(|source| Error::Map {
                name: map_names::PROXY_SOCKETS,
                source,
            })
    }

    /// Unregisters a socket cookie; removing an unknown cookie is not an error.
    pub fn remove(&mut self, cookie: u64) -> Result<()> {
        match self.map.remove(&cookie) {
            Ok(()) => Ok(()),
            Err(e) if crate::is_not_found(&e) => Ok(()),
            Err(source) => Err(Error::Map {
                name: map_names::PROXY_SOCKETS,
                source,
            }),
        }
    }

    /// Whether `cookie` is registered.
    #[cfg(feature = "test-util")]
    pub fn contains(&self, cookie: u64) -> Result<bool> {
        match self.map.get(&cookie, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(Error::Map {
                name: map_names::PROXY_SOCKETS,
                source,
            }),
        }
    }

    /// Registers the socket `fd` and returns its cookie.
    #[cfg(feature = "test-util")]
    pub fn register(&mut self, fd: BorrowedFd<'_>) -> Result<u64> {
        let cookie = socket_cookie(fd).map_err(|source| Error::Io {
            what: "getsockopt(SO_COOKIE)".into(),
            source,
        })?;
        self.insert(cookie)?;
        Ok(cookie)
    }
}

/// Puts the proxy's listening socket for `port` into the pinned `ward_listeners` sockhash, where
/// the `sk_lookup` program finds it (a SYN reusing a TIME_WAIT tuple). The kernel drops the
/// entry when the socket closes; a restarted `ward run` inserts its new listener.
pub fn register_listener(
    pin_root: impl AsRef<Path>,
    port: u16,
    listener: &impl AsRawFd,
) -> Result<()> {
    let name = map_names::LISTENERS;
    let path = pin_root.as_ref().join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::Map { name, source })?;
    let map = Map::from_map_data(data).map_err(|source| Error::Map { name, source })?;
    let mut map: SockHash<MapData, u32> =
        SockHash::try_from(map).map_err(|source| Error::Map { name, source })?;
    map.insert(u32::from(port), listener.as_raw_fd(), 0)
        .map_err(|source| Error::Map { name, source })
}

#[cfg(test)]
mod tests {
    #[test]
    fn proxy_sockets_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::ProxySockets>();
    }

    #[test]
    fn socket_cookie_is_stable_and_unique() {
        use std::os::fd::AsFd;
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ca = super::socket_cookie(a.as_fd()).unwrap();
        assert_ne!(ca, 0);
        assert_eq!(ca, super::socket_cookie(a.as_fd()).unwrap());
        assert_ne!(ca, super::socket_cookie(b.as_fd()).unwrap());
    }
}
