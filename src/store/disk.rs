//! The writer's view of the data dir's disk: writes are refused, with
//! nothing stored, while the disk is too full for them or has turned
//! read-only; for good once sled has failed a write; and each group of
//! writes is synced before it is acknowledged.
//!
//! sled 0.34 stops its log at the first write to it that fails (ENOSPC,
//! EROFS, EIO): it keeps the error and fails every later write and flush
//! with it until the store is opened again, and even reads fail wherever
//! they would have to finish a node split or merge, which writes. What it
//! holds in memory may then include writes that are not on disk, so from
//! then on the writer refuses every job rather than run it (a write that
//! changes nothing would otherwise be acknowledged on the strength of
//! state that is not on disk). Worse, what sled wrote of a batch it failed
//! in the middle of is recovered on the next start: the batch is torn. So
//! the writer keeps sled from getting there: before each group it checks
//! that the file system has not turned read-only, and before applying
//! each write that the disk has room for it besides [`KEEP_FREE_BYTES`];
//! a refused write stores nothing, reads keep working, and writes resume
//! by themselves once the disk is usable again.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::Error;

/// Space left free on the data dir's disk, besides what a write needs:
/// room for what sled writes on its own (node splits, segment cleaning)
/// and for its log buffers not yet on disk.
pub const KEEP_FREE_BYTES: u64 = 16 << 20;

/// What one entry of a write (a record change, an event) is reckoned to
/// take in sled's log: about 0.8 KiB was measured for records with
/// 200-character sources, node rewrites included; this is more than twice
/// that.
const BYTES_PER_ENTRY: u64 = 2 << 10;

/// How long a blob file's length must be seen to stay the same before
/// [`Disk::sync_blobs`] stops looking at it: sled writes a blob in one go,
/// so one that has not grown for this long is whole.
const BLOB_SETTLED: Duration = Duration::from_secs(2);

/// A blob file as last synced.
struct BlobSynced {
    len: u64,
    /// When it was synced at this length.
    synced: Instant,
    /// Seen at the same length again, [`BLOB_SETTLED`] after that.
    settled: bool,
}

/// Test-only: turns the syncs of this module off, to show that the
/// power-loss suite (`tests/power_loss.rs`) notices. `commit` skips those
/// after each group of writes (sled's flush alone decides what is
/// durable), `all` also those at open. Never set it on a real store.
pub const SKIP_SYNCS_ENV: &str = "TRADEWATCH_TEST_ONLY_SKIP_SYNCS";

/// Which syncs [`SKIP_SYNCS_ENV`] turns off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SkipSyncs {
    None,
    Commit,
    All,
}

impl SkipSyncs {
    fn from_env() -> SkipSyncs {
        let skip = match std::env::var(SKIP_SYNCS_ENV).as_deref() {
            Ok("commit") => SkipSyncs::Commit,
            Ok("all") => SkipSyncs::All,
            _ => SkipSyncs::None,
        };
        if skip != SkipSyncs::None {
            tracing::warn!(
                "{SKIP_SYNCS_ENV} is set: {skip:?} syncs are skipped, so acknowledged writes can be lost in a power cut"
            );
        }
        skip
    }
}

pub struct Disk {
    dir: PathBuf,
    /// The data dir itself, whose modification time is set before each
    /// group: a file system that has turned read-only under the server
    /// (ext4 after an I/O error) refuses that, before sled tries a write.
    dir_handle: Option<File>,
    /// sled's log, synced after each flush: on Linux sled's flush only
    /// calls `sync_file_range`, which does not make a grown file's new
    /// size and blocks durable (sled leaves that to a periodic fsync).
    log: Option<File>,
    /// The files in sled's `blobs` directory synced so far, with their
    /// length when synced (see [`Disk::sync_blobs`]). sled keeps a node too large for its log
    /// (over about 128 KiB: a leaf of large event blocks) in a file of its
    /// own, named by log sequence, which it never syncs; a log entry whose
    /// blob is torn after a power cut ends what sled recovers, and every
    /// write after it is lost.
    blobs: HashMap<u64, BlobSynced>,
    /// Why writes are refused now (see [`Disk::check`]).
    refused: Option<Error>,
    /// Set once sled has failed a write: every later job gets it.
    stopped: Option<Error>,
    nudger: Nudger,
    skip_syncs: SkipSyncs,
}

impl Disk {
    /// The disk of the store in `dir`, which `db` has open. Syncs once what
    /// sled writes without syncing: its configuration file, the data dir
    /// (the entries of its files, and of the snapshot sled renames into
    /// place at every start), and the directories above it (the data dir's
    /// own entry, which the store has just created with its parents when it
    /// was new: an entry is durable only once its directory is synced).
    pub fn open(dir: &Path, db: &sled::Db) -> Disk {
        let skip_syncs = SkipSyncs::from_env();
        let open = |path: &Path| {
            File::open(path)
                .map_err(
                    |e| tracing::warn!(path = %path.display(), error = %e, "cannot open for disk checks"),
                )
                .ok()
        };
        let dir_handle = open(dir);
        if skip_syncs < SkipSyncs::All {
            for file in [open(&dir.join("conf")).as_ref(), dir_handle.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Err(e) = file.sync_all() {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the store's files");
                }
            }
            sync_parents(dir);
        }
        let mut disk = Disk {
            dir: dir.to_owned(),
            dir_handle,
            log: open(&dir.join("db")),
            blobs: HashMap::new(),
            refused: None,
            stopped: None,
            nudger: Nudger::start(db.clone()),
            skip_syncs,
        };
        if skip_syncs >= SkipSyncs::All {
            return disk;
        }
        if let Err(e) = disk.sync_blobs() {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the store's blobs");
        }
        disk
    }

    /// Checks the disk before a group of jobs: whether it has turned
    /// read-only.
    pub fn check(&mut self) {
        if self.stopped.is_none() {
            self.refused = self.probe();
        }
    }

    #[cfg(unix)]
    fn probe(&self) -> Option<Error> {
        let dir = self.dir_handle.as_ref()?;
        let now = rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        };
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: now,
        };
        // Another failure than a read-only (or full) file system (not the
        // directory's owner, say) leaves it to sled.
        let touched = rustix::fs::futimens(dir, &times);
        touched
            .err()
            .and_then(|e| Error::disk_refused(&self.dir, &e.into()))
    }

    #[cfg(not(unix))]
    fn probe(&self) -> Option<Error> {
        None
    }

    /// Before a write of `entries` (record changes and events) is applied:
    /// refuses it, with nothing stored, unless the disk has room for it
    /// besides [`KEEP_FREE_BYTES`]. sled must not run out in the middle of
    /// a write: what it wrote of it until then would be recovered on the
    /// next start, a batch torn in two.
    pub fn room_for(&self, entries: usize) -> Result<(), Error> {
        let Some(free) = self.free_bytes() else {
            return Ok(());
        };
        let needed = (entries as u64).saturating_mul(BYTES_PER_ENTRY);
        if free >= KEEP_FREE_BYTES.saturating_add(needed) {
            return Ok(());
        }
        Err(Error::disk_low(&self.dir, free, KEEP_FREE_BYTES, needed))
    }

    #[cfg(unix)]
    fn free_bytes(&self) -> Option<u64> {
        let stat = rustix::fs::fstatvfs(self.dir_handle.as_ref()?).ok()?;
        Some(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    #[cfg(not(unix))]
    fn free_bytes(&self) -> Option<u64> {
        None
    }

    /// Why the next job is refused, if it is.
    pub fn refused(&self) -> Option<Error> {
        self.stopped.clone().or_else(|| self.refused.clone())
    }

    /// A job's error as answered: an I/O error from sled means it has
    /// stopped its log (or is about to), so the writer stops too.
    pub fn job_failed(&mut self, db: &sled::Db, error: Error) -> Error {
        match error {
            Error::Storage(e @ sled::Error::Io(_)) => self.stop(db, &e),
            other => other,
        }
    }

    /// Makes a group of jobs durable: flushes sled, then syncs what it
    /// leaves unsynced — the blob files written or grown since the last
    /// commit and their directory, then the log. The answer for each job of
    /// the group that did not fail by itself.
    ///
    /// The blobs go first: a log entry made durable before the blob it
    /// names is skipped by sled's recovery when the blob is missing, which
    /// brings a batch back torn (its records without its event block), and
    /// ends the recovery when the blob is there but torn. sled's flush has
    /// waited for every blob of the jobs flushed, so each is whole here.
    /// (A blob another thread is still writing belongs to a log entry after
    /// them; it is synced again by the commit after, before that one
    /// answers.)
    pub fn commit(&mut self, db: &sled::Db) -> Result<(), Error> {
        if let Some(stopped) = &self.stopped {
            // Not even a flush: one may never return (see `stop`).
            return Err(stopped.clone());
        }
        if self.refused.is_some() {
            // Nothing was written, and a read-only file system would
            // refuse the fsync.
            return Ok(());
        }
        self.nudger.flushing(true);
        let flushed = db.flush();
        self.nudger.flushing(false);
        let synced = flushed.and_then(|_| {
            if self.skip_syncs >= SkipSyncs::Commit {
                return Ok(());
            }
            self.sync_blobs()?;
            if let Some(log) = &self.log {
                log.sync_data()?;
            }
            Ok(())
        });
        synced.map_err(|e| self.stop(db, &e))
    }

    /// Syncs the blob files that are new or have changed since the last
    /// call, then, if there were any, their directory.
    ///
    /// Not only the newest: sled writes a blob from whichever thread needs
    /// the node (a read that splits a node on its way writes one too, and
    /// so does its background cleaning), so a blob can appear, or still be
    /// being written, after one with a higher number was synced: the
    /// power-loss suite found one synced empty and never again, and after
    /// the cut sled's recovery stopped at it, losing acknowledged writes. A blob
    /// seen here half written is synced again once its length has changed;
    /// each one's length is looked at until it is seen unchanged
    /// [`BLOB_SETTLED`] after it was synced, so that a commit does not stat
    /// every blob.
    fn sync_blobs(&mut self) -> std::io::Result<()> {
        let dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            entries => entries?,
        };
        let now = Instant::now();
        let mut present = Vec::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            present.push(id);
            let known = self.blobs.get_mut(&id);
            if known.as_ref().is_some_and(|b| b.settled) {
                continue;
            }
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(b) = known
                && b.len == len
            {
                b.settled = now.duration_since(b.synced) >= BLOB_SETTLED;
                continue;
            }
            match File::open(entry.path()).and_then(|f| f.sync_data()) {
                // Removed by sled meanwhile: no longer needed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                synced => synced?,
            }
            self.blobs.insert(
                id,
                BlobSynced {
                    len,
                    synced: now,
                    settled: false,
                },
            );
            synced_any = true;
        }
        if self.blobs.len() != present.len() {
            let present: std::collections::HashSet<u64> = present.into_iter().collect();
            self.blobs.retain(|id, _| present.contains(id));
        }
        if synced_any {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Stops writes for good after `error`. sled is left open until the
    /// process ends, as after a crash (it recovers on the next start): a
    /// failed write may leave its log waiting forever for a write that
    /// will not happen (a blob that could not be written leaves its slot in
    /// the log buffer claimed), and closing it would then wait too.
    fn stop(&mut self, db: &sled::Db, error: &sled::Error) -> Error {
        let answer = Error::write_failed(&self.dir, error);
        if self.stopped.is_none() {
            tracing::error!(dir = %self.dir.display(), %error, "a write failed; refusing writes until restarted");
            self.stopped = Some(answer.clone());
            std::mem::forget(db.clone());
        }
        answer
    }
}

/// Syncs every directory above `dir`, so that the entry naming each (the
/// data dir's own, and those of the parents `create_dir_all` made with it)
/// is durable. A parent that cannot be synced is left, said once for the
/// data dir's own parent: the data dir then survives a power cut only if
/// its entry was made durable before.
fn sync_parents(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    for (n, parent) in dir.ancestors().skip(1).enumerate() {
        if let Err(e) = File::open(parent).and_then(|f| f.sync_all()) {
            if n == 0 {
                tracing::warn!(dir = %parent.display(), error = %e, "cannot sync the data dir's parent");
            } else {
                tracing::debug!(dir = %parent.display(), error = %e, "cannot sync a parent of the data dir");
            }
        }
    }
}

/// Wakes a flush that sled 0.34 would leave waiting forever: when a write
/// of its log started by a reservation fails, sled records the error
/// without waking the threads waiting for that write to be durable (and
/// its flusher thread, which would, stops on the same error). Any later
/// flush call finds the error and wakes them, so this thread makes one
/// while a flush of the writer has taken more than a second.
struct Nudger {
    /// Milliseconds since `start` when the writer's flush began, plus one;
    /// 0 while it is not flushing.
    flushing_since: Arc<AtomicU64>,
    start: Instant,
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Nudger {
    const AFTER: Duration = Duration::from_secs(1);

    fn start(db: sled::Db) -> Nudger {
        let flushing_since = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let (stop, stopped) = mpsc::channel::<()>();
        let since = flushing_since.clone();
        let thread = std::thread::Builder::new()
            .name("tradewatch-nudger".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(Nudger::AFTER / 4) {
                    let began = since.load(Ordering::Acquire);
                    let now = start.elapsed().as_millis() as u64 + 1;
                    if began != 0 && now.saturating_sub(began) > Nudger::AFTER.as_millis() as u64 {
                        tracing::debug!("a flush has taken over a second; waking it");
                        let _ = db.flush();
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "cannot start the flush nudger"))
            .ok();
        Nudger {
            flushing_since,
            start,
            stop: Some(stop),
            thread,
        }
    }

    fn flushing(&self, flushing: bool) {
        let since = if flushing {
            self.start.elapsed().as_millis() as u64 + 1
        } else {
            0
        };
        self.flushing_since.store(since, Ordering::Release);
    }
}

impl Drop for Nudger {
    /// Stops the thread and waits for it, so that it no longer holds the
    /// store when the writer has stopped.
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use tonic::Code;

    use super::*;

    /// sled hands the error that stopped its log to later callers as a copy
    /// keeping only the kind; both map the same.
    fn errors(kind: ErrorKind, raw: i32) -> [sled::Error; 2] {
        let original = sled::Error::Io(std::io::Error::from_raw_os_error(raw));
        assert_eq!(std::io::Error::from_raw_os_error(raw).kind(), kind);
        [original.clone(), original]
    }

    #[test]
    fn disk_faults_get_precise_statuses_naming_the_dir() {
        let dir = Path::new("/srv/tradewatch");
        for (kind, raw, code, says) in [
            (
                ErrorKind::StorageFull,
                28,
                Code::ResourceExhausted,
                "is full (no space left on device)",
            ),
            (
                ErrorKind::QuotaExceeded,
                122,
                Code::ResourceExhausted,
                "over its disk quota",
            ),
            (
                ErrorKind::ReadOnlyFilesystem,
                30,
                Code::FailedPrecondition,
                "read-only file system",
            ),
        ] {
            for error in errors(kind, raw) {
                let answer = Error::write_failed(dir, &error);
                assert_eq!(answer.code(), code, "{answer}");
                let message = answer.to_string();
                assert!(
                    message.contains(says) && message.contains("/srv/tradewatch"),
                    "{message}"
                );
                assert!(message.contains("restarted"), "{message}");

                let opening = Error::open_failed(dir, error.clone());
                assert_eq!(opening.code(), code, "{opening}");
                assert!(opening.to_string().contains("/srv/tradewatch"), "{opening}");

                // A read that fails on it is not INTERNAL either.
                assert_eq!(Error::Storage(error).code(), code);
            }
            let probe = Error::disk_refused(dir, &std::io::Error::from_raw_os_error(raw)).unwrap();
            assert_eq!(probe.code(), code);
            assert!(probe.to_string().contains("nothing was stored"), "{probe}");
        }
    }

    #[test]
    fn other_failures_keep_their_statuses() {
        let dir = Path::new("/srv/tradewatch");
        let eio = sled::Error::Io(std::io::Error::from_raw_os_error(5));
        let answer = Error::write_failed(dir, &eio);
        assert_eq!(answer.code(), Code::Unavailable);
        assert!(answer.to_string().contains("/srv/tradewatch"), "{answer}");
        for error in [eio.clone(), eio.clone().clone()] {
            let answer = Error::write_failed(dir, &error).to_string();
            assert!(answer.contains("(Input/output error (os error 5))"), "{answer}");
        }
        assert_eq!(Error::Storage(eio).code(), Code::Unavailable);
        let bug = sled::Error::ReportableBug("x".into());
        assert_eq!(Error::Storage(bug).code(), Code::Internal);
        assert!(Error::disk_refused(dir, &std::io::Error::from_raw_os_error(1)).is_none());
        let busy = Error::open_failed(dir, sled::Error::Io(ErrorKind::WouldBlock.into()));
        assert!(busy.to_string().contains("another tradewatch"), "{busy}");
        let low = Error::disk_low(dir, 3 << 20, KEEP_FREE_BYTES, 1 << 20);
        assert_eq!(low.code(), Code::ResourceExhausted);
        assert!(low.to_string().contains("is full (3.0 MiB free"), "{low}");
        let big = Error::disk_low(dir, 20 << 20, KEEP_FREE_BYTES, 8 << 20);
        assert!(big.to_string().contains("too full for this write"), "{big}");
        assert!(big.to_string().contains("nothing was stored"), "{big}");
    }
}
