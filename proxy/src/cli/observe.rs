//! `ward observe`: reads the flow log (rotated files first), filters, and prints JSON lines or
//! the Hubble-like text.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::flows::model::Flow;
use crate::flows::writer::backup_path;

/// `ward observe` filters.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub verdict: Option<String>,
    pub from_labels: Vec<(String, String)>,
    pub to_labels: Vec<(String, String)>,
    pub protocol: Option<String>,
    pub since: Option<SystemTime>,
}

fn has_label(labels: &[String], k: &str, v: &str) -> bool {
    labels.iter().any(|l| {
        let bare = match l.split_once(':') {
            Some((src, rest)) if !src.contains('=') => rest,
            _ => l.as_str(),
        };
        bare == format!("{k}={v}") || l == &format!("{k}={v}")
    })
}

impl Filter {
    pub fn matches(&self, f: &Flow) -> bool {
        if let Some(v) = &self.verdict {
            if !f.verdict.eq_ignore_ascii_case(v) {
                return false;
            }
        }
        if !self
            .from_labels
            .iter()
            .all(|(k, v)| has_label(&f.source.labels, k, v))
        {
            return false;
        }
        if !self
            .to_labels
            .iter()
            .all(|(k, v)| has_label(&f.destination.labels, k, v))
        {
            return false;
        }
        if let Some(p) = &self.protocol {
            let p = p.to_ascii_lowercase();
            let ok = match p.as_str() {
                "http" | "dns" | "kafka" => f.l7.as_ref().is_some_and(|l| l.protocol == p),
                other => f.protocol.eq_ignore_ascii_case(other),
            };
            if !ok {
                return false;
            }
        }
        if let Some(since) = self.since {
            match humantime::parse_rfc3339_weak(&f.time) {
                Ok(t) if t >= since => {}
                _ => return false,
            }
        }
        true
    }
}

/// Parses `k=v,k=v` (a `k8s:` prefix is accepted and ignored).
pub fn parse_label_filter(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected key=value"))?;
        let k = k.strip_prefix("k8s:").unwrap_or(k);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Reads the flow log (its rotated files first, oldest first), printing matching flows; with
/// `follow`, keeps tailing, across rotations.
pub fn observe(
    path: &Path,
    filter: &Filter,
    json: bool,
    follow: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    // Every file is opened before any is read, newest first, so a rotation while reading
    // neither hides a file nor shows one twice (a file met again under a newer name is the
    // same inode and is skipped).
    let open = || loop {
        match std::fs::File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => return Err(e),
        }
    };
    let current = open()?;
    let mut seen = vec![inode(&current)];
    let mut backups = Vec::new();
    for n in 1.. {
        let Ok(f) = std::fs::File::open(backup_path(path, n)) else {
            break;
        };
        if !seen.contains(&inode(&f)) {
            seen.push(inode(&f));
            backups.push(f);
        }
    }
    for f in backups.into_iter().rev() {
        read_lines(std::io::BufReader::new(f), filter, json, out)?;
    }
    let mut reader = std::io::BufReader::new(current);
    if !follow {
        return read_lines(reader, filter, json, out);
    }
    let mut line = String::new();
    loop {
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            emit(&line, filter, json, out)?;
            line.clear();
            continue;
        }
        // At the end: was the file rotated away? The writer flushes before it renames, so
        // reading the old file to its end once more gets the rest; then the new one.
        if rotated(path, reader.get_ref()) {
            loop {
                let n = reader.read_line(&mut line)?;
                if !line.is_empty() && (n == 0 || line.ends_with('\n')) {
                    emit(&line, filter, json, out)?;
                    line.clear();
                }
                if n == 0 {
                    break;
                }
            }
            reader = std::io::BufReader::new(open()?);
            continue;
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn inode(f: &std::fs::File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    f.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Whether `path` no longer names the file `open` reads.
fn rotated(path: &Path, open: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), open.metadata()) {
        (Ok(now), Ok(ours)) => now.ino() != ours.ino() || now.dev() != ours.dev(),
        (Err(_), _) => true,
        _ => false,
    }
}

fn read_lines(
    reader: impl BufRead,
    filter: &Filter,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    for line in reader.lines() {
        emit(&line?, filter, json, out)?;
    }
    Ok(())
}

fn emit(line: &str, filter: &Filter, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    let line = line.trim_end();
    let Ok(flow) = serde_json::from_str::<Flow>(line) else {
        return Ok(());
    };
    if !filter.matches(&flow) {
        return Ok(());
    }
    if json {
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{}", flow.text_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::fixtures::{l7_deny, numbered, temp_dir, urls};
    use crate::flows::writer::backup_path;
    use std::sync::Arc;

    #[test]
    fn filters() {
        let f = l7_deny();
        let yes = |flt: Filter| assert!(flt.matches(&f), "{flt:?}");
        let no = |flt: Filter| assert!(!flt.matches(&f), "{flt:?}");
        yes(Filter::default());
        yes(Filter {
            verdict: Some("dropped".into()),
            ..Default::default()
        });
        no(Filter {
            verdict: Some("FORWARDED".into()),
            ..Default::default()
        });
        yes(Filter {
            from_labels: parse_label_filter("org=empire,k8s:class=tiefighter").unwrap(),
            ..Default::default()
        });
        no(Filter {
            to_labels: parse_label_filter("class=tiefighter").unwrap(),
            ..Default::default()
        });
        yes(Filter {
            protocol: Some("http".into()),
            ..Default::default()
        });
        yes(Filter {
            protocol: Some("tcp".into()),
            ..Default::default()
        });
        no(Filter {
            protocol: Some("udp".into()),
            ..Default::default()
        });
        no(Filter {
            protocol: Some("kafka".into()),
            ..Default::default()
        });
        let mut kafka = l7_deny();
        if let Some(l7) = kafka.l7.as_mut() {
            l7.protocol = "kafka".into();
        }
        assert!(Filter {
            protocol: Some("kafka".into()),
            ..Default::default()
        }
        .matches(&kafka));
        no(Filter {
            since: Some(SystemTime::now()),
            ..Default::default()
        });
        assert!(parse_label_filter("novalue").is_err());
    }

    #[test]
    fn observe_reads_json_lines_and_skips_garbage() {
        let dir = std::env::temp_dir().join(format!("ward-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.jsonl");
        let line = serde_json::to_string(&l7_deny()).unwrap();
        std::fs::write(&path, format!("not json\n{line}\n")).unwrap();
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{line}\n"));
        let mut out = Vec::new();
        observe(&path, &Filter::default(), false, false, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    /// A `Write` another thread can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn observe_follow_continues_across_a_rotation() {
        let dir = temp_dir("follow");
        let path = dir.join("flows.jsonl");
        let line = |n| serde_json::to_string(&numbered(n)).unwrap() + "\n";
        std::fs::write(&path, line(1)).unwrap();
        let out = Shared::default();
        {
            let (path, mut out) = (path.clone(), out.clone());
            // Follows forever; the thread ends with the test process.
            std::thread::spawn(move || observe(&path, &Filter::default(), true, true, &mut out));
        }
        let wait_for = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while urls(&out.0.lock().unwrap()).len() < n {
                assert!(std::time::Instant::now() < deadline, "follow stalled");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(1);
        // The writer's rotation: append, rename away, start a new file.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(line(2).as_bytes())
            .unwrap();
        std::fs::rename(&path, backup_path(&path, 1)).unwrap();
        std::fs::write(&path, line(3)).unwrap();
        wait_for(3);
        assert_eq!(
            urls(&out.0.lock().unwrap()),
            [
                "http://deathstar/1",
                "http://deathstar/2",
                "http://deathstar/3"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
