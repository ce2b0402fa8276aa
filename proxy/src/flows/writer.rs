//! The flow log: flows appended as JSON lines from a dedicated thread, in batches, rotated by
//! size. The request path never blocks on it: when the queue is full, flows are counted lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::from_event::HttpEvent;
use super::model::Flow;

/// Where the flow log is written and how much of it is kept.
#[derive(Clone, Debug)]
pub struct FlowLogConfig {
    pub path: PathBuf,
    /// The file is rotated (`flows.jsonl` → `flows.jsonl.1` → …) once it passes this size.
    pub max_bytes: u64,
    /// Rotated files kept; the oldest beyond this is deleted. 0: the file is truncated instead.
    pub max_backups: u32,
}

/// Flows waiting for the flow-log thread; beyond this they are counted as lost (the request
/// path never blocks on the log).
pub const FLOW_QUEUE: usize = 16 * 1024;
/// The flow-log thread writes in batches at most this often under load, so a busy proxy pays
/// one wake-up per batch rather than one per request.
pub const FLOW_BATCH_INTERVAL: Duration = Duration::from_millis(20);

// Requests are the common case and go unboxed (no allocation per request).
#[allow(clippy::large_enum_variant)]
enum Record {
    /// Kernel events are rare next to requests: boxed, so queue slots stay small.
    Flow(Box<Flow>),
    Http(HttpEvent),
    Dns(Box<super::DnsEvent>),
    Kafka(Box<super::KafkaEvent>),
    /// Everything queued before it is on disk: acknowledge.
    Flush(mpsc::SyncSender<()>),
}

/// Appends flows to the flow log from a dedicated thread, rotating it by size.
#[derive(Clone)]
pub struct FlowWriter {
    tx: mpsc::SyncSender<Record>,
    lost: prometheus_client::metrics::counter::Counter,
}

/// The open flow log and its rotation.
struct LogFile {
    cfg: FlowLogConfig,
    out: std::io::BufWriter<std::fs::File>,
    size: u64,
}

impl LogFile {
    fn open(cfg: FlowLogConfig) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cfg.path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            cfg,
            out: std::io::BufWriter::with_capacity(256 * 1024, file),
            size,
        })
    }

    fn write(&mut self, r: &Record, line: &mut Vec<u8>) -> std::io::Result<()> {
        line.clear();
        match r {
            Record::Flow(f) => super::encode::write_flow(f, line)?,
            Record::Http(e) => super::encode::write_http(e, line)?,
            Record::Dns(e) => super::encode::write_dns(e, line)?,
            Record::Kafka(e) => super::encode::write_kafka(e, line)?,
            Record::Flush(ack) => {
                self.out.flush()?;
                let _ = ack.try_send(());
                return Ok(());
            }
        }
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_bytes {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Moves the file to `.1` (older backups shift up) and starts a new one. The log goes on
    /// whatever happens to the old file: one that is gone (deleted or moved by someone else)
    /// counts as rotated; one that cannot be moved is kept and retried after another
    /// `max_bytes`.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let path = &self.cfg.path;
        let moved = if !path.exists() {
            Ok(())
        } else if self.cfg.max_backups > 0 {
            for n in (1..self.cfg.max_backups).rev() {
                let _ = std::fs::rename(backup_path(path, n), backup_path(path, n + 1));
            }
            std::fs::rename(path, backup_path(path, 1))
        } else {
            std::fs::remove_file(path)
        };
        *self = LogFile::open(self.cfg.clone())?;
        if moved.is_err() {
            self.size = 0;
        }
        moved
    }
}

/// `flows.jsonl.N`.
pub fn backup_path(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl FlowWriter {
    pub fn start(
        cfg: FlowLogConfig,
        lost: prometheus_client::metrics::counter::Counter,
    ) -> std::io::Result<FlowWriter> {
        if let Some(dir) = cfg.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = LogFile::open(cfg)?;
        let (tx, rx) = mpsc::sync_channel::<Record>(FLOW_QUEUE);
        let lost_in_thread = lost.clone();
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(2048);
                let lost = lost_in_thread;
                let mut write = |log: &mut LogFile, r: Record| {
                    let is_flow = !matches!(r, Record::Flush(_));
                    if let Err(e) = log.write(&r, &mut line) {
                        tracing::warn!(error = %e, "writing the flow log");
                        if is_flow {
                            lost.inc();
                        }
                    }
                };
                while let Ok(r) = rx.recv() {
                    write(&mut log, r);
                    while let Ok(r) = rx.try_recv() {
                        write(&mut log, r);
                    }
                    if let Err(e) = log.out.flush() {
                        tracing::warn!(error = %e, "writing the flow log");
                    }
                    // Let the next batch gather instead of waking for every flow.
                    std::thread::sleep(FLOW_BATCH_INTERVAL);
                }
            })?;
        Ok(FlowWriter { tx, lost })
    }

    /// Waits (up to `timeout`) until every flow sent before this call is written: at shutdown,
    /// so the last requests' flows are not lost with the process.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        self.tx.send(Record::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }

    fn enqueue(&self, r: Record) {
        if let Err(mpsc::TrySendError::Full(_)) = self.tx.try_send(r) {
            self.lost.inc();
        }
    }

    pub fn send(&self, f: Flow) {
        tracing::debug!(target: "ward::flow", "{}", f.summary);
        self.enqueue(Record::Flow(Box::new(f)));
    }

    pub fn send_dns(&self, e: super::DnsEvent) {
        self.enqueue(Record::Dns(Box::new(e)));
    }

    pub fn send_kafka(&self, e: super::KafkaEvent) {
        self.enqueue(Record::Kafka(Box::new(e)));
    }

    pub fn send_http(&self, e: HttpEvent) {
        self.enqueue(Record::Http(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::observe::{observe, Filter};
    use crate::flows::fixtures::{numbered, temp_dir, urls};

    #[test]
    fn the_flow_log_rotates_by_size_and_observe_reads_every_file_in_order() {
        let dir = temp_dir("rotate");
        let path = dir.join("flows.jsonl");
        let line_len = serde_json::to_string(&numbered(100)).unwrap().len() as u64 + 1;
        let cfg = FlowLogConfig {
            path: path.clone(),
            max_bytes: line_len * 10,
            max_backups: 2,
        };
        let lost = prometheus_client::metrics::counter::Counter::default();
        let w = FlowWriter::start(cfg, lost.clone()).unwrap();
        for n in 100..135 {
            w.send(numbered(n));
        }
        drop(w);
        // The writer thread ends once the queue is drained; wait for the last flow.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("/134\"")
        {
            assert!(std::time::Instant::now() < deadline, "flows not written");
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in [path.clone(), backup_path(&path, 1), backup_path(&path, 2)] {
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len <= line_len * 10, "{} is {len} bytes", p.display());
        }
        assert!(!backup_path(&path, 3).exists(), "only two backups are kept");
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        // 10 lines a file: 130..135 in the file, 120..130 in .1, 110..120 in .2, older gone.
        let want: Vec<String> = (110..135)
            .map(|n| format!("http://deathstar/{n}"))
            .collect();
        assert_eq!(urls(&out), want);
        assert_eq!(lost.get(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_goes_on_when_its_file_disappears_and_flush_waits_for_the_disk() {
        let dir = temp_dir("vanish");
        let path = dir.join("flows.jsonl");
        let line_len = serde_json::to_string(&numbered(100)).unwrap().len() as u64 + 1;
        let cfg = FlowLogConfig {
            path: path.clone(),
            max_bytes: line_len * 4,
            max_backups: 1,
        };
        let w = FlowWriter::start(cfg, Default::default()).unwrap();
        for n in 100..103 {
            w.send(numbered(n));
        }
        assert!(w.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        // Someone deletes the file; the next rotation finds nothing to move and starts anew.
        std::fs::remove_file(&path).unwrap();
        for n in 103..110 {
            w.send(numbered(n));
        }
        assert!(w.flush(Duration::from_secs(5)));
        let mut out = Vec::new();
        observe(&path, &Filter::default(), true, false, &mut out).unwrap();
        let got = urls(&out);
        assert_eq!(got.last().unwrap(), "http://deathstar/109", "{got:?}");
        assert!(got.len() >= 4, "flows after the deletion are kept: {got:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
