//! `ip netns exec` runs its command in a private mount namespace with a fresh sysfs on `/sys`,
//! so `/sys/fs/bpf` there is an empty directory, not the host's bpffs. Pins made there (a bpffs
//! mounted privately) vanish with the process: the TCX links would be released and the
//! datapath would fail open when `ward run` stops. So `ward run`/`ward uninstall` join the
//! mount namespace of PID 1 when they find themselves in such a private namespace and the host
//! has a bpffs; the network namespace is unchanged (setns of a mount namespace does not touch it).
//! The host namespace is taken from the parent process (`ip netns exec` execs us, so the parent
//! is whoever ran `ip`), else PID 1.

use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|st| st.filesystem_type() == BPF_FS_MAGIC)
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
    let ppid = nix::unistd::getppid().as_raw();
    let Some(pid) = [ppid, 1].into_iter().find(|pid| {
        !same_ns("/proc/self/ns/mnt", &format!("/proc/{pid}/ns/mnt"))
            && is_bpffs(Path::new(&format!("/proc/{pid}/root/sys/fs/bpf")))
    }) else {
        return Ok(false);
    };
    let f = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    // The caller guarantees a single-threaded process, which setns of a mount namespace needs.
    setns(&f, CloneFlags::CLONE_NEWNS)?;
    Ok(true)
}
