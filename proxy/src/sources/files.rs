//! The policy-file source: notices changes to the configured files and directories (inotify,
//! with a slow metadata poll behind it; or a metadata poll alone), finds what changed by
//! comparing file metadata (no file is read unless its metadata changed), and sends the
//! changed files, read once, to the controller in one event per look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use l7_rules::source::{policy_files, read_policy_file, LoadError};
use tracing::{debug, warn};

use super::{FileChange, FileContent, SourceEvent};
use crate::config::PolicyWatch;

/// How often the policy files are looked at when polling alone.
pub const POLICY_POLL: Duration = Duration::from_millis(200);
/// How often they are looked at anyway behind inotify.
pub const INOTIFY_FALLBACK_POLL: Duration = Duration::from_secs(2);
/// After a notification, how long to wait for the rest of a burst (an editor's write, rename
/// and chmod) before looking.
pub const SETTLE: Duration = Duration::from_millis(10);

/// What tells a file's versions apart without reading it: a write changes its ctime (and
/// size or mtime), a replacement its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: SystemTime,
    ctime: (i64, i64),
    inode: (u64, u64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok()?,
        ctime: (m.ctime(), m.ctime_nsec()),
        inode: (m.dev(), m.ino()),
    })
}

/// The policy files under `dirs` and their stamps.
pub fn scan(dirs: &[PathBuf]) -> Result<BTreeMap<PathBuf, Stamp>, LoadError> {
    Ok(policy_files(dirs)?
        .into_iter()
        .filter_map(|p| Some((p.clone(), stamp(&p)?)))
        .collect())
}

/// Every policy file's text (start-up and `ward check-config`), with the stamps they had.
pub type Initial = (BTreeMap<PathBuf, Stamp>, BTreeMap<PathBuf, String>);

pub fn read_all(dirs: &[PathBuf]) -> Result<Initial, LoadError> {
    let stamps = scan(dirs)?;
    let mut texts = BTreeMap::new();
    let mut errors = Vec::new();
    for path in stamps.keys() {
        match read_policy_file(path) {
            Ok(t) => {
                texts.insert(path.clone(), t);
            }
            Err(mut e) => errors.append(&mut e.diagnostics),
        }
    }
    if errors.is_empty() {
        Ok((stamps, texts))
    } else {
        Err(LoadError {
            diagnostics: errors,
        })
    }
}

/// The changes between two scans, each changed file read once.
fn changes(
    before: &BTreeMap<PathBuf, Stamp>,
    now: &BTreeMap<PathBuf, Stamp>,
) -> (Vec<FileChange>, Option<SystemTime>) {
    let mut out = Vec::new();
    let mut newest = None;
    for (path, s) in now {
        if before.get(path) == Some(s) {
            continue;
        }
        newest = newest.max(Some(s.modified));
        let content = match read_policy_file(path) {
            Ok(t) => FileContent::Text(t),
            Err(e) => FileContent::Unreadable(e.diagnostics),
        };
        out.push(FileChange {
            path: path.clone(),
            content,
        });
    }
    for path in before.keys().filter(|p| !now.contains_key(*p)) {
        out.push(FileChange {
            path: path.clone(),
            content: FileContent::Removed,
        });
    }
    (out, newest)
}

/// Watches `dirs` until `stop`, starting from `stamps` (what the controller started with).
pub fn spawn(
    dirs: Vec<PathBuf>,
    stamps: BTreeMap<PathBuf, Stamp>,
    watch: PolicyWatch,
    events: mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policy-files".into())
        .spawn(move || {
            let mut looker = Looker {
                dirs,
                stamps,
                events,
                failing: false,
            };
            let (tx, notified) = mpsc::channel();
            // The watcher lives as long as this thread; without it, polling alone.
            let watcher = match watch {
                PolicyWatch::Poll => None,
                PolicyWatch::Inotify => watch_dirs(&looker.dirs, tx),
            };
            let every = if watcher.is_some() {
                INOTIFY_FALLBACK_POLL
            } else {
                POLICY_POLL
            };
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // Wake at least every 250 ms to see `stop`.
                let wait = every
                    .saturating_sub(last.elapsed())
                    .min(Duration::from_millis(250));
                let look = match notified.recv_timeout(wait) {
                    Ok(()) => {
                        std::thread::sleep(SETTLE);
                        while notified.try_recv().is_ok() {}
                        true
                    }
                    Err(_) => last.elapsed() >= every,
                };
                if look {
                    last = Instant::now();
                    if !looker.look() {
                        return;
                    }
                }
            }
            drop(watcher);
        })
}

/// inotify on every policy directory (and on the directory of every policy file named
/// directly, so a file replaced by a rename is seen). Only events that can change a policy
/// file wake the source: its own reads do not.
fn watch_dirs(dirs: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::event::EventKind;
    use notify::{RecursiveMode, Watcher};
    let handler = move |e: notify::Result<notify::Event>| {
        if e.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
            let _ = tx.send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the policy files with inotify; polling them");
            return None;
        }
    };
    for d in dirs {
        let (target, mode) = if d.is_dir() {
            (d.as_path(), RecursiveMode::Recursive)
        } else {
            (
                d.parent().unwrap_or_else(|| Path::new(".")),
                RecursiveMode::NonRecursive,
            )
        };
        if let Err(e) = watcher.watch(target, mode) {
            warn!(error = %e, path = %target.display(), "cannot watch a policy path with inotify; polling them");
            return None;
        }
    }
    Some(watcher)
}

/// Compares the policy files with what was last seen and sends what changed.
struct Looker {
    dirs: Vec<PathBuf>,
    stamps: BTreeMap<PathBuf, Stamp>,
    events: mpsc::Sender<SourceEvent>,
    failing: bool,
}

impl Looker {
    /// One look. False when the controller is gone.
    fn look(&mut self) -> bool {
        let now = match scan(&self.dirs) {
            Ok(now) => now,
            Err(e) => {
                // Said once per failure, not at every look.
                if !self.failing {
                    self.failing = true;
                    let sent = self.events.send(SourceEvent::SourceError {
                        source: "policy files",
                        diagnostics: e.diagnostics,
                    });
                    return sent.is_ok();
                }
                return true;
            }
        };
        self.failing = false;
        let (changed, modified) = changes(&self.stamps, &now);
        if changed.is_empty() {
            return true;
        }
        debug!(files = changed.len(), "policy files changed");
        self.stamps = now;
        self.events
            .send(SourceEvent::PolicyFiles {
                changes: changed,
                modified,
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_files_are_read_and_removals_are_seen() {
        let dir = std::env::temp_dir().join(format!("ward-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
        std::fs::write(dir.join("b.yaml"), "b: 1\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a policy\n").unwrap();
        let dirs = vec![dir.clone()];
        let first = scan(&dirs).unwrap();
        assert_eq!(first.len(), 2);
        assert!(changes(&first, &first).0.is_empty());
        // Same size, new content: still a change.
        std::fs::write(dir.join("a.yaml"), "a: 2\n").unwrap();
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        let now = scan(&dirs).unwrap();
        let (changed, modified) = changes(&first, &now);
        assert!(modified.is_some());
        let got: Vec<(String, String)> = changed
            .iter()
            .map(|c| {
                let name = c.path.file_name().unwrap().to_string_lossy().into_owned();
                let what = match &c.content {
                    FileContent::Text(t) => t.clone(),
                    FileContent::Removed => "removed".into(),
                    FileContent::Unreadable(d) => format!("{d:?}"),
                };
                (name, what)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.yaml".to_string(), "a: 2\n".to_string()),
                ("b.yaml".to_string(), "removed".to_string())
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Both ways of watching see a write in place, a file renamed into place (how editors
    /// and Kubernetes ConfigMap volumes replace files) and a removal.
    #[test]
    fn every_way_of_watching_sees_writes_renames_and_removals() {
        for watch in [PolicyWatch::Inotify, PolicyWatch::Poll] {
            let dir =
                std::env::temp_dir().join(format!("ward-watch-{watch:?}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
            let dirs = vec![dir.clone()];
            let (events, inbox) = mpsc::channel();
            let stop = Arc::new(AtomicBool::new(false));
            let thread = spawn(
                dirs.clone(),
                scan(&dirs).unwrap(),
                watch,
                events,
                stop.clone(),
            )
            .unwrap();
            let next = || match inbox.recv_timeout(Duration::from_secs(10)) {
                Ok(SourceEvent::PolicyFiles { changes, .. }) => changes
                    .into_iter()
                    .map(|c| {
                        let name = c.path.file_name().unwrap().to_string_lossy().into_owned();
                        match c.content {
                            FileContent::Text(t) => format!("{name}={}", t.trim()),
                            FileContent::Removed => format!("{name} removed"),
                            FileContent::Unreadable(_) => format!("{name} unreadable"),
                        }
                    })
                    .collect::<Vec<_>>(),
                _ => panic!("{watch:?}: no change seen"),
            };
            std::fs::write(dir.join("a.yaml"), "a: 2\n").unwrap();
            assert_eq!(next(), ["a.yaml=a: 2"], "{watch:?}");
            std::fs::write(dir.join(".b.tmp"), "b: 1\n").unwrap();
            std::fs::rename(dir.join(".b.tmp"), dir.join("b.yaml")).unwrap();
            assert_eq!(next(), ["b.yaml=b: 1"], "{watch:?}");
            std::fs::remove_file(dir.join("a.yaml")).unwrap();
            assert_eq!(next(), ["a.yaml removed"], "{watch:?}");
            stop.store(true, Ordering::Relaxed);
            thread.join().unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
