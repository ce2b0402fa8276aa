//! Raw `bpf()` calls aya 0.14 does not expose: the TCX link info of a pinned link
//! (ifindex / attach type): `aya::programs::links::LinkInfo` only has `id()`,
//! `program_id()` and `link_type()`, not the `tcx` member of `struct
//! bpf_link_info`, and `FdLink` hands out no fd to read it with (so
//! BPF_OBJ_GET is ours too). Plus the bpffs check and mount and
//! if_nametoindex, through nix.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use crate::{Error, Hook, Result};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `bpf(2)` with a zeroed 128-byte attr buffer.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable buffer of the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub(crate) struct LinkInfo {
    pub prog_id: u32,
    pub ifindex: u32,
    pub attach_type: u32,
}

fn obj_get(path: &Path) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("NUL in {}", path.display())))?;
    let mut attr = [0u8; 128];
    put_u64(&mut attr, 0, c.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|source| Error::Io {
        what: format!("BPF_OBJ_GET {}", path.display()),
        source,
    })?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `struct bpf_link_info` of a pinned TCX link.
pub(crate) fn link_info_from_pin(path: &Path) -> Result<LinkInfo> {
    let fd = obj_get(path)?;
    let mut info = [0u8; 64];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, fd.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| Error::Io {
        what: format!("link info of {}", path.display()),
        source,
    })?;
    Ok(LinkInfo {
        prog_id: get_u32(&info, 8),
        ifindex: get_u32(&info, 16),
        attach_type: get_u32(&info, 20),
    })
}

pub(crate) fn tcx_attach_type(hook: Hook) -> u32 {
    match hook {
        Hook::FromEndpoint | Hook::FromNetdev => BPF_TCX_INGRESS,
        Hook::ToEndpoint | Hook::ToNetdev => BPF_TCX_EGRESS,
    }
}

/// Same instructions (tag) as the program with id `ours`, using the same
/// pinned maps? A program with our tag that references an older generation of
/// a map (e.g. a pin that was removed and recreated) would otherwise be
/// "kept" while `apply` writes maps it never reads. Compared: the ids of the
/// maps pinned under `pin_root` that each program references.
pub(crate) fn same_program(attached: u32, ours: u32, pin_root: &Path) -> Result<bool> {
    if attached == ours {
        return Ok(true);
    }
    let mut a = None;
    let mut o = None;
    for info in aya::programs::loaded_programs().flatten() {
        if info.id() == attached {
            a = Some(info);
        } else if info.id() == ours {
            o = Some(info);
        }
    }
    let (Some(a), Some(o)) = (a, o) else {
        return Ok(false);
    };
    if a.tag() != o.tag() {
        return Ok(false);
    }
    let pinned: Vec<u32> = crate::common::map_names::EVERY
        .iter()
        .filter_map(|n| aya::maps::MapInfo::from_pin(pin_root.join(n)).ok())
        .map(|i| i.id())
        .collect();
    let used = |p: &aya::programs::ProgramInfo| -> Option<Vec<u32>> {
        let mut ids: Vec<u32> = p
            .map_ids()
            .ok()
            .flatten()?
            .into_iter()
            .filter(|id| pinned.contains(id))
            .collect();
        ids.sort_unstable();
        Some(ids)
    };
    match (used(&a), used(&o)) {
        (Some(x), Some(y)) => Ok(x == y),
        // Kernel without map ids in prog info: fall back to the tag.
        _ => Ok(true),
    }
}

pub(crate) fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| Error::NoSuchInterface(iface.into()))
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|st| st.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Mounts bpffs on /sys/fs/bpf when the pin root is below it and nothing is
/// mounted there (fresh VMs and CI containers); errors if the pin root's
/// filesystem is still not bpffs.
pub(crate) fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let base = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(base) && !is_bpffs(base) {
        nix::mount::mount(
            Some("bpf"),
            base,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| Error::Io {
            what: "mounting bpffs on /sys/fs/bpf".into(),
            source: errno.into(),
        })?;
    }
    let mut probe = pin_root.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        return Err(Error::Invalid(format!(
            "pin root {} is not on a bpffs",
            pin_root.display()
        )));
    }
    Ok(())
}
