//! powercut: a FUSE file system for power-loss tests, in the spirit of
//! Jepsen's LazyFS. It passes every operation through to a backing
//! directory and keeps track of what has been made durable (see
//! [`model`]); [`PowerCut::cut`] is the power cut: from then on every
//! operation fails with EIO, and the backing directory is rebuilt as the
//! disk would be when the power comes back — only what was synced, and
//! optionally the last unsynced write torn. Unmount, mount the backing
//! directory again (or use it directly), and see what survived.
//!
//! Mounting needs `/dev/fuse` and either root (the mount is made with
//! mount(2)) or `fusermount3` (Debian's `fuse3`).
//!
//! The kernel sends no request for `sync_file_range`, `syncfs` or `sync`
//! on a FUSE file system: none of them makes anything durable here, which
//! is the point — only `fsync`/`fdatasync` of a file, and `fsync` of a
//! directory, do.

#![allow(dead_code)]

pub mod model;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use model::Kind;
pub use model::{CutReport, Model, Tear};

/// How long the kernel may cache names and attributes: every change goes
/// through this file system, which the kernel sees.
const TTL: Duration = Duration::from_secs(1);

struct Inner {
    model: Model,
    /// Open files: inode and the backing file.
    handles: HashMap<u64, (u64, File)>,
    next_handle: u64,
}

/// A mounted power-cut file system. Dropping it unmounts it (lazily, if it
/// is still in use).
pub struct PowerCut {
    inner: Arc<Mutex<Inner>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PowerCut {
    /// Mounts `backing` (whose contents count as durable) at `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<PowerCut> {
        let model = Model::open(backing)?;
        let inner = Arc::new(Mutex::new(Inner {
            model,
            handles: HashMap::new(),
            next_handle: 1,
        }));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("powercut".into()),
            MountOption::Subtype("powercut".into()),
            MountOption::NoAtime,
        ];
        let fs = Fs { inner: inner.clone() };
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(PowerCut {
            inner,
            session: Some(session),
            mountpoint: mountpoint.to_owned(),
            backing: backing.to_owned(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The power cut: nothing from now on reaches the disk (every
    /// operation fails with EIO), and the backing directory becomes what
    /// the disk holds when the power comes back. Unmount next (after the
    /// processes using the mount are gone).
    pub fn cut(&self, tear: Tear) -> io::Result<CutReport> {
        lock(&self.inner).model.cut(tear)
    }

    /// The syncs (`fsync`, `fdatasync`, of files and directories) so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.inner).model.syncs()
    }

    /// A flag set by the cut, as it happens (before any operation fails
    /// because of it).
    pub fn cut_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        lock(&self.inner).model.cut_flag()
    }

    /// Arms a cut to happen right after the `syncs`-th `fsync`/`fdatasync`
    /// from now (of a directory, with `dirs_only`; else of a file or a
    /// directory), before that call returns; see [`PowerCut::armed_cut`].
    pub fn arm(&self, syncs: u64, dirs_only: bool, tear: Tear) {
        lock(&self.inner).model.arm(syncs, dirs_only, tear);
    }

    /// What the armed cut did, once it has happened (`None` before).
    pub fn armed_cut(&self) -> Option<io::Result<CutReport>> {
        lock(&self.inner).model.armed_report()
    }

    /// Unmounts and waits for the file system's thread.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                // Still in use: detach it, so that it goes once unused.
                let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                // SAFETY: a valid C string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                Err(e)
            }
        }
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        let _ = self.unmount_now();
    }
}

/// Whether this process may mount FUSE file systems here: `Err` says why
/// not. (Tries a mount on a scratch directory.)
pub fn can_mount() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("there is no /dev/fuse".into());
    }
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (backing, mnt) = (scratch.path().join("backing"), scratch.path().join("mnt"));
    for dir in [&backing, &mnt] {
        fs::create_dir(dir).map_err(|e| e.to_string())?;
    }
    let mounted = PowerCut::mount(&backing, &mnt).map_err(|e| {
        format!(
            "cannot mount a FUSE file system ({e}): it takes /dev/fuse and root (CAP_SYS_ADMIN), or \
             fusermount3 (Debian's fuse3)"
        )
    })?;
    mounted
        .unmount()
        .map_err(|e| format!("cannot unmount a FUSE file system: {e}"))
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nanos.clamp(0, 999_999_999) as u32),
        Err(_) => UNIX_EPOCH,
    }
}

fn attr(ino: u64, m: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.len(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: if m.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: m.blksize() as u32,
        flags: 0,
    }
}

impl Inner {
    fn attr(&self, ino: u64) -> io::Result<FileAttr> {
        if self.model.is_cut() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let path = self.model.path(ino)?;
        Ok(attr(ino, &fs::symlink_metadata(path)?))
    }

    fn open(&mut self, ino: u64) -> io::Result<u64> {
        if self.model.kind(ino)? == Kind::Dir {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        let path = self.model.path(ino)?;
        // Never with O_APPEND (a positioned write would append), always
        // readable (to save what a write overwrites).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))?;
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, (ino, file));
        Ok(fh)
    }

    fn file(&self, fh: FileHandle) -> io::Result<&File> {
        self.handles
            .get(&fh.0)
            .map(|(_, f)| f)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

struct Fs {
    inner: Arc<Mutex<Inner>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Locked for an operation of `req`'s thread (named in the trace).
    fn locked(&self, req: &Request) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        inner.model.set_caller(req.pid());
        inner
    }

    fn entry(&self, req: &Request, reply: ReplyEntry, made: impl FnOnce(&mut Inner) -> io::Result<u64>) {
        let mut inner = self.locked(req);
        match made(&mut inner).and_then(|ino| inner.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn empty(&self, req: &Request, reply: ReplyEmpty, op: impl FnOnce(&mut Inner) -> io::Result<()>) {
        match op(&mut self.locked(req)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

#[allow(clippy::disallowed_methods)] // a file's time, as the kernel asked
fn system_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(req, reply, |inner| inner.model.lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut inner = self.locked(req);
        let result = (|| {
            inner.attr(ino.0)?; // (EIO after the cut)
            let path = inner.model.path(ino.0)?;
            if let Some(size) = size {
                inner.model.set_len(ino.0, size)?;
            }
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&path, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                let mut times = FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(system_time(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(system_time(t));
                }
                File::open(&path)?.set_times(times)?;
            }
            inner.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.entry(req, reply, |inner| {
            inner.model.create(parent.0, name, mode & !umask & 0o7777)
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        self.entry(req, reply, |inner| {
            inner.model.mkdir(parent.0, name, mode & !umask & 0o7777)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(req, reply, |inner| inner.model.unlink(parent.0, name));
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(req, reply, |inner| inner.model.rmdir(parent.0, name));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        self.empty(req, reply, |inner| {
            inner
                .model
                .rename(parent.0, name, newparent.0, newname, no_replace)
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut inner = self.lock();
        let opened = inner.attr(ino.0).and_then(|_| inner.open(ino.0));
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut inner = self.locked(req);
        let created = (|| {
            let ino = inner.model.create(parent.0, name, mode & !umask & 0o7777)?;
            let fh = inner.open(ino)?;
            Ok((inner.attr(ino)?, fh))
        })();
        match created {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.lock();
        let read = (|| {
            if inner.model.is_cut() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let file = inner.file(fh)?;
            let mut buf = vec![0; size as usize];
            let mut n = 0;
            while n < buf.len() {
                match file.read_at(&mut buf[n..], offset + n as u64)? {
                    0 => break,
                    m => n += m,
                }
            }
            buf.truncate(n);
            Ok(buf)
        })();
        match read {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut guard = self.locked(req);
        let Inner { model, handles, .. } = &mut *guard;
        let written = match handles.get(&fh.0) {
            Some((_, file)) => model.write(ino.0, file, offset, data),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        match written {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.empty(req, reply, |inner| inner.model.fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let inner = self.lock();
        match inner.attr(ino.0).and_then(|_| inner.model.kind(ino.0)) {
            Ok(Kind::Dir) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(Kind::File) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let inner = self.lock();
        let entries = match inner.model.entries(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let dots = [
            (".".into(), ino.0, Kind::Dir),
            ("..".into(), inner.model.parent(ino.0), Kind::Dir),
        ];
        for (i, (name, child, kind)) in dots.into_iter().chain(entries).enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::Dir => FileType::Directory,
                Kind::File => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.empty(req, reply, |inner| inner.model.fsync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let inner = self.lock();
        match rustix::fs::statvfs(inner.model.root()) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e.raw_os_error())),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut guard = self.locked(req);
        let Inner { model, handles, .. } = &mut *guard;
        let done = match handles.get(&fh.0) {
            Some((_, file)) => model.fallocate(ino.0, file, offset, length, mode),
            None => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

#[cfg(test)]
mod tests;
