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

/// A file found changed is read only once its writer is done, so that a file written in place
/// (`kubectl get cnp -o yaml > x.yaml` truncates first and writes later) is never enforced
/// empty or cut short. "Done" is any of:
/// - inotify saw the writer close it, or never saw a writer (a file renamed into place);
/// - without inotify, its metadata has not changed for [`QUIET`];
/// - and, always, its metadata is the same after reading it as before.
///
/// A file that became empty must stay empty for [`EMPTY_QUIET`]: truncation is how most
/// in-place writes begin.
pub const QUIET: Duration = Duration::from_millis(250);
pub const EMPTY_QUIET: Duration = Duration::from_secs(2);
/// A writer that keeps a file open longer than this is no longer waited for.
pub const BUSY_LIMIT: Duration = Duration::from_secs(5);
/// When a changed file was not ready, the next look comes this soon.
pub const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// What a look found: the changes ready to send, their newest modification, and whether a
/// changed file was not ready (its old stamp is kept, so the next look sees it again).
struct Found {
    changes: Vec<FileChange>,
    newest: Option<SystemTime>,
    not_ready: bool,
}

/// Files inotify saw opened for writing and not yet closed, since when.
type Busy = std::collections::HashMap<PathBuf, Instant>;

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// The changes between two scans, each ready file read once. `now` gets the old stamp of a
/// file that is not ready.
fn changes(
    before: &BTreeMap<PathBuf, Stamp>,
    now: &mut BTreeMap<PathBuf, Stamp>,
    busy: &Busy,
    quiet: Duration,
) -> Found {
    let mut found = Found {
        changes: Vec::new(),
        newest: None,
        not_ready: false,
    };
    let mut wait = Vec::new();
    for (path, s) in now.iter() {
        if before.get(path) == Some(s) {
            continue;
        }
        let writing = busy.get(path).is_some_and(|t| t.elapsed() < BUSY_LIMIT);
        let settled = age(s.modified) >= quiet
            && (s.len > 0 || age(s.modified) >= EMPTY_QUIET || !before.contains_key(path));
        if writing || !settled {
            wait.push(path.clone());
            continue;
        }
        let content = match read_policy_file(path) {
            Ok(t) => FileContent::Text(t),
            Err(e) => FileContent::Unreadable(e.diagnostics),
        };
        if stamp(path).as_ref() != Some(s) {
            // Written while read.
            wait.push(path.clone());
            continue;
        }
        found.newest = found.newest.max(Some(s.modified));
        found.changes.push(FileChange {
            path: path.clone(),
            content,
        });
    }
    for path in wait {
        found.not_ready = true;
        match before.get(&path) {
            Some(old) => now.insert(path, *old),
            None => now.remove(&path),
        };
    }
    for path in before.keys().filter(|p| !now.contains_key(*p)) {
        found.changes.push(FileChange {
            path: path.clone(),
            content: FileContent::Removed,
        });
    }
    found
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
            let (tx, notices) = mpsc::channel();
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
            let mut busy = Busy::new();
            let mut last = Instant::now();
            let mut again: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                let due = again.unwrap_or(last + every);
                // Wake at least every 250 ms to see `stop`.
                let wait = due
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(250));
                let (look, quiet) = match notices.recv_timeout(wait) {
                    Ok(n) => {
                        std::thread::sleep(SETTLE);
                        for n in std::iter::once(n).chain(notices.try_iter()) {
                            n.apply(&mut busy);
                        }
                        (true, Duration::ZERO)
                    }
                    Err(_) if Instant::now() >= due => {
                        // A timed look: without a writer's close to go by, wait for quiet.
                        (
                            true,
                            if again.is_some() && watcher.is_some() {
                                Duration::ZERO
                            } else {
                                QUIET
                            },
                        )
                    }
                    Err(_) => (false, QUIET),
                };
                if look {
                    last = Instant::now();
                    busy.retain(|_, t| t.elapsed() < BUSY_LIMIT);
                    match looker.look(&busy, quiet) {
                        None => return,
                        Some(not_ready) => {
                            again = not_ready.then(|| Instant::now() + LOOK_AGAIN);
                        }
                    }
                }
            }
            drop(watcher);
        })
}

/// What inotify said about the policy paths.
enum Notice {
    /// Opened for writing or written.
    Writing(Vec<PathBuf>),
    /// A writer closed it.
    Closed(Vec<PathBuf>),
    /// Created, renamed, removed, or its metadata changed.
    Changed,
}

impl Notice {
    fn apply(self, busy: &mut Busy) {
        match self {
            Notice::Writing(paths) => {
                for p in paths {
                    busy.entry(p).or_insert_with(Instant::now);
                }
            }
            Notice::Closed(paths) => {
                for p in paths {
                    busy.remove(&p);
                }
            }
            Notice::Changed => {}
        }
    }
}

/// inotify on every policy directory (and on the directory of every policy file named
/// directly, so a file replaced by a rename is seen). Only events that can change a policy
/// file wake the source: its own reads do not.
fn watch_dirs(dirs: &[PathBuf], tx: mpsc::Sender<Notice>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    use notify::{RecursiveMode, Watcher};
    let handler = move |e: notify::Result<notify::Event>| {
        let Ok(e) = e else { return };
        let notice = match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Notice::Closed(e.paths),
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Data(_)) | EventKind::Create(CreateKind::File) => {
                Notice::Writing(e.paths)
            }
            _ => Notice::Changed,
        };
        let _ = tx.send(notice);
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
    /// One look: `Some(a changed file was not ready)`, or `None` when the controller is gone.
    fn look(&mut self, busy: &Busy, quiet: Duration) -> Option<bool> {
        let mut now = match scan(&self.dirs) {
            Ok(now) => now,
            Err(e) => {
                // Said once per failure, not at every look.
                if !self.failing {
                    self.failing = true;
                    let sent = self.events.send(SourceEvent::SourceError {
                        source: SOURCE,
                        diagnostics: e.diagnostics,
                    });
                    sent.ok()?;
                }
                return Some(false);
            }
        };
        if self.failing {
            self.failing = false;
            self.events
                .send(SourceEvent::SourceRecovered { source: SOURCE })
                .ok()?;
        }
        let found = changes(&self.stamps, &mut now, busy, quiet);
        self.stamps = now;
        if !found.changes.is_empty() {
            debug!(files = found.changes.len(), "policy files changed");
            self.events
                .send(SourceEvent::PolicyFiles {
                    changes: found.changes,
                    modified: found.newest,
                })
                .ok()?;
        }
        Some(found.not_ready)
    }
}

/// The name this source gives its errors.
const SOURCE: &str = "policy files";

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
        let none = Busy::new();
        assert!(changes(&first, &mut first.clone(), &none, Duration::ZERO)
            .changes
            .is_empty());
        // Same size, new content: still a change.
        std::fs::write(dir.join("a.yaml"), "a: 2\n").unwrap();
        std::fs::remove_file(dir.join("b.yaml")).unwrap();
        let mut now = scan(&dirs).unwrap();
        let found = changes(&first, &mut now, &none, Duration::ZERO);
        assert!(found.newest.is_some());
        let got: Vec<(String, String)> = found
            .changes
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

    /// A directory holding `a.yaml` (with `text`) watched by the source; stop and join it,
    /// then remove the directory, with [`Watched::finish`].
    struct Watched {
        dir: PathBuf,
        inbox: mpsc::Receiver<SourceEvent>,
        stop: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Watched {
        fn start(tag: &str, watch: PolicyWatch, text: &str) -> Watched {
            let dir =
                std::env::temp_dir().join(format!("ward-{tag}-{watch:?}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.yaml"), text).unwrap();
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
            Watched {
                dir,
                inbox,
                stop,
                thread,
            }
        }

        fn finish(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap();
            std::fs::remove_dir_all(&self.dir).unwrap();
        }
    }

    /// Both ways of watching see a write in place, a file renamed into place (how editors
    /// and Kubernetes ConfigMap volumes replace files) and a removal.
    #[test]
    fn every_way_of_watching_sees_writes_renames_and_removals() {
        for watch in [PolicyWatch::Inotify, PolicyWatch::Poll] {
            let w = Watched::start("watch", watch, "a: 1\n");
            let (dir, inbox) = (&w.dir, &w.inbox);
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
            w.finish();
        }
    }

    /// A file written in place (truncated, then written slowly, as a shell redirection of a
    /// slow command does) is never sent empty, in either way of watching; with inotify it is
    /// not sent cut short either, however long the writer pauses (polling alone can only wait
    /// for the file to be quiet for [`QUIET`]).
    #[test]
    fn a_file_written_in_place_is_sent_only_when_whole() {
        use std::io::Write;
        const RULE: &str = "kind: Namespace\nmetadata: {name: a}\n";
        for watch in [PolicyWatch::Inotify, PolicyWatch::Poll] {
            let w = Watched::start("inplace", watch, RULE);
            let file = w.dir.join("a.yaml");
            // Let the watch start, then truncate and keep writing for longer than a poll and
            // the quiet time.
            std::thread::sleep(Duration::from_millis(300));
            let mut writer = std::fs::File::create(&file).unwrap();
            std::thread::sleep(Duration::from_millis(700));
            writer.write_all(b"kind: Namespace\n").unwrap();
            writer.flush().unwrap();
            std::thread::sleep(match watch {
                PolicyWatch::Inotify => Duration::from_millis(400),
                PolicyWatch::Poll => Duration::from_millis(20),
            });
            writer.write_all(b"metadata: {name: b}\n").unwrap();
            drop(writer);
            let first = w.inbox.recv_timeout(Duration::from_secs(10));
            let Ok(SourceEvent::PolicyFiles { changes, .. }) = first else {
                panic!("{watch:?}: nothing sent");
            };
            match &changes[..] {
                [FileChange {
                    content: FileContent::Text(t),
                    ..
                }] => assert_eq!(t, "kind: Namespace\nmetadata: {name: b}\n", "{watch:?}"),
                other => panic!("{watch:?}: {other:?}"),
            }
            w.finish();
        }
    }
}
