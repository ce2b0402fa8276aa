//! The policy-file source: watches the configured files and directories by polling their
//! metadata (no file is read unless its metadata changed) and sends the changed files, read
//! once, to the controller in one event per poll.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use l7_rules::source::{policy_files, read_policy_file, LoadError};
use tracing::debug;

use super::{FileChange, FileContent, SourceEvent};

/// How often the policy files are looked at.
pub const POLICY_POLL: Duration = Duration::from_millis(200);

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

/// Polls `dirs` until `stop`, starting from `stamps` (what the controller started with).
pub fn spawn(
    dirs: Vec<PathBuf>,
    mut stamps: BTreeMap<PathBuf, Stamp>,
    events: mpsc::Sender<SourceEvent>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policy-files".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(POLICY_POLL);
                let now = match scan(&dirs) {
                    Ok(now) => now,
                    Err(e) => {
                        // Said once per failure, not every poll.
                        if !failing {
                            failing = true;
                            let _ = events.send(SourceEvent::SourceError {
                                source: "policy files",
                                diagnostics: e.diagnostics,
                            });
                        }
                        continue;
                    }
                };
                failing = false;
                let (changed, modified) = changes(&stamps, &now);
                if changed.is_empty() {
                    continue;
                }
                debug!(files = changed.len(), "policy files changed");
                stamps = now;
                if events
                    .send(SourceEvent::PolicyFiles {
                        changes: changed,
                        modified,
                    })
                    .is_err()
                {
                    return;
                }
            }
        })
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
}
