//! Attaching the TC programs to interfaces and the listener lookup to the namespace, through
//! pinned links that outlive `ward run`.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{self, SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, SkLookup,
};

use crate::common::program_names;
use crate::{io_err, sys, typed_program, AttachOutcome, Datapath, Error, Hook, Result};

/// The link pin of the namespace's `sk_lookup` program, under `links/`.
pub(crate) const SK_LOOKUP_LINK: &str = "netns-sk_lookup";

impl Datapath {
    /// Attaches `ward_sk_lookup` to the calling thread's network namespace (the node's), in
    /// place of an earlier one; the link is pinned at `links/netns-sk_lookup`, so it stays while
    /// `ward run` restarts. It hands the proxy's listener to SYNs that reuse the tuple of a
    /// proxy-side TIME_WAIT socket (see `ward_tw_redirect` in `ebpf/ward.bpf.c`).
    pub fn attach_sk_lookup(&mut self) -> Result<()> {
        let path = self.pin_root.join("links").join(SK_LOOKUP_LINK);
        // The new link is attached and pinned beside the old one before the old one goes, so
        // a restart leaves no moment without the lookup (both select the same listener).
        // (bpffs refuses names with a dot.)
        let next = path.with_file_name(format!("{SK_LOOKUP_LINK}-next"));
        detach_pin(&next)?;
        let netns = fs::File::open("/proc/thread-self/ns/net")
            .map_err(io_err("opening this thread's network namespace"))?;
        let name = program_names::SK_LOOKUP;
        let prog = typed_program::<SkLookup>(&mut self.ebpf, name)?;
        let id = prog
            .attach(&netns)
            .map_err(|source| Error::Program { name, source })?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?
            .into();
        link.pin(&next).map_err(|source| Error::Pin {
            path: next.clone(),
            source,
        })?;
        detach_pin(&path)?;
        fs::rename(&next, &path).map_err(io_err(format!("renaming {}", next.display())))?;
        Ok(())
    }

    fn link_path(&self, iface: &str, hook: Hook) -> PathBuf {
        self.pin_root
            .join("links")
            .join(format!("{iface}-{}", hook.pin_suffix()))
    }

    pub(crate) fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        typed_program(&mut self.ebpf, hook.program())
    }

    /// Attaches `hook`'s program to `iface` (in the calling thread's network
    /// namespace) through a TCX link pinned at `<pin root>/links/<iface>-<hook>`.
    /// Idempotent: an existing pinned link running the same program is kept (no
    /// gap on restart); one running another program is updated atomically; a
    /// stale pin (interface recreated) is replaced.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<AttachOutcome> {
        self.attach_program(iface, hook, hook)
    }

    /// Test hook: attaches `program`'s code at `hook`'s place (to exercise the
    /// atomic replacement path). Not for production use.
    #[cfg(feature = "test-util")]
    pub fn attach_program_for_test(
        &mut self,
        iface: &str,
        hook: Hook,
        program: Hook,
    ) -> Result<AttachOutcome> {
        self.attach_program(iface, hook, program)
    }

    /// Kernel id of the program attached at `iface`/`hook` (from its link pin).
    #[cfg(feature = "test-util")]
    pub fn attached_program_id(&self, iface: &str, hook: Hook) -> Result<Option<u32>> {
        let path = self.link_path(iface, hook);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(sys::link_info_from_pin(&path)?.prog_id))
    }

    /// Kernel run-time statistics `(run_time_ns, run_cnt)` of the program that
    /// is actually attached at `iface`/`hook` (after a restart that is usually
    /// the previous process's program). Needs `kernel.bpf_stats_enabled=1`.
    #[cfg(feature = "test-util")]
    pub fn attached_program_stats(&self, iface: &str, hook: Hook) -> Result<Option<(u64, u64)>> {
        let Some(id) = self.attached_program_id(iface, hook)? else {
            return Ok(None);
        };
        Ok(aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == id)
            .map(|p| (p.run_time().as_nanos() as u64, p.run_count())))
    }

    /// Kernel id of `hook`'s program as loaded by this process.
    #[cfg(feature = "test-util")]
    pub fn program_id(&mut self, hook: Hook) -> Result<u32> {
        let name = hook.program();
        Ok(self
            .program(hook)?
            .info()
            .map_err(|source| Error::Program { name, source })?
            .id())
    }

    fn attach_program(&mut self, iface: &str, hook: Hook, program: Hook) -> Result<AttachOutcome> {
        let ifindex = sys::ifindex(iface)?;
        // clsact is only needed by the legacy netlink attach; with TCX it is
        // harmless, so "already there" and any other failure are not ours to report.
        let _ = tc::qdisc_add_clsact(iface);
        let path = self.link_path(iface, hook);
        let name = program.program();
        let prog_id = self
            .program(program)?
            .info()
            .map_err(|source| Error::Program { name, source })?
            .id();
        if path.exists() {
            let info = sys::link_info_from_pin(&path)?;
            let pinned = PinnedLink::from_pin(&path).map_err(|source| Error::Link {
                path: path.clone(),
                source,
            })?;
            let fd_link: FdLink = pinned.into();
            if info.ifindex == ifindex && info.attach_type == sys::tcx_attach_type(hook) {
                if sys::same_program(info.prog_id, prog_id, &self.pin_root)? {
                    return Ok(AttachOutcome::Kept);
                }
                let link =
                    SchedClassifierLink::try_from(fd_link).map_err(|source| Error::Link {
                        path: path.clone(),
                        source,
                    })?;
                let prog = self.program(program)?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|source| Error::Program { name, source })?;
                // The pin keeps the (updated) link; our fd can go.
                drop(
                    prog.take_link(id)
                        .map_err(|source| Error::Program { name, source })?,
                );
                return Ok(AttachOutcome::Replaced);
            }
            // Stale: the interface it was made for is gone.
            drop(fd_link);
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
        }
        let prog = self.program(program)?;
        let id = prog
            .attach_with_options(
                iface,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| Error::Program { name, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| Error::Program { name, source })?;
        let fd_link = FdLink::try_from(link).map_err(|source| Error::Link {
            path: path.clone(),
            source,
        })?;
        fd_link.pin(&path).map_err(|source| Error::Pin {
            path: path.clone(),
            source,
        })?;
        Ok(AttachOutcome::Created)
    }

    /// Detaches `hook` from `iface` by removing its link pin. Returns whether
    /// anything was attached.
    pub fn detach(&mut self, iface: &str, hook: Hook) -> Result<bool> {
        detach_pin(&self.link_path(iface, hook))
    }

    /// Pinned links as `(iface, hook)`.
    pub fn attached(&self) -> Result<Vec<(String, Hook)>> {
        list_links(&self.pin_root)
    }
}

pub(crate) fn detach_pin(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let pinned = PinnedLink::from_pin(path).map_err(|source| Error::Link {
        path: path.to_path_buf(),
        source,
    })?;
    let fd_link = pinned
        .unpin()
        .map_err(io_err(format!("unpinning {}", path.display())))?;
    drop(fd_link);
    Ok(true)
}

pub(crate) fn list_links(root: &Path) -> Result<Vec<(String, Hook)>> {
    let dir = root.join("links");
    let mut out = Vec::new();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io_err("reading link dir"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        for hook in Hook::ALL {
            if let Some(iface) = name.strip_suffix(&format!("-{}", hook.pin_suffix())) {
                out.push((iface.to_string(), hook));
            }
        }
    }
    out.sort();
    Ok(out)
}
