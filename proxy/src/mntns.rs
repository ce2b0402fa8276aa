//! `ip netns exec` runs its command in a private mount namespace with a fresh sysfs on `/sys`,
//! so `/sys/fs/bpf` there is an empty directory, not the host's bpffs. Pins made there (a bpffs
//! mounted privately) vanish with the process: the TCX links would be released and the
//! datapath would fail open when `ward run` stops. So `ward run`/`ward uninstall` join the
//! mount namespace of PID 1 when they find themselves in such a private namespace and the host
//! has a bpffs; the network namespace is unchanged (setns of a mount namespace does not touch it).
//! The host namespace is taken from the parent process (`ip netns exec` execs us, so the parent
//! is whoever ran `ip`), else PID 1.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::Path;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn same_ns(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.ino() == y.ino() && x.dev() == y.dev()
        }
        _ => true,
    }
}

/// Joins PID 1's mount namespace when ours is a private one without the host's bpffs. Must be
/// called while the process is single-threaded. Returns whether it switched.
pub fn join_host_bpffs() -> std::io::Result<bool> {
    if is_bpffs(Path::new("/sys/fs/bpf")) {
        return Ok(false);
    }
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let Some(pid) = [ppid, 1].into_iter().find(|pid| {
        !same_ns("/proc/self/ns/mnt", &format!("/proc/{pid}/ns/mnt"))
            && is_bpffs(Path::new(&format!("/proc/{pid}/root/sys/fs/bpf")))
    }) else {
        return Ok(false);
    };
    let f = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    // SAFETY: a valid mount-namespace fd; the process is single-threaded (caller's contract).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}
