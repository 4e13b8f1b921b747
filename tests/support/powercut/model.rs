//! The durability model: a tree of files and directories kept in a backing
//! directory, with what a power cut would keep of it.
//!
//! Every operation is applied to the backing directory at once (it is what
//! the page cache shows: reads see every write), and the model remembers
//! what has been made durable:
//!
//! - **File data and size** become durable by an `fsync` or `fdatasync` of
//!   that file (both count the same). Before a write, a truncation or a hole
//!   punched overwrites bytes that are durable, those bytes are saved (once
//!   per sync): the cut writes them back and truncates the file to its
//!   durable size. A file never synced has durable size 0.
//! - **Directory entries** — a new file or directory, a removal, either
//!   side of a rename — become durable only by an `fsync` of their
//!   directory, which makes the whole directory as it is then durable. A
//!   rename between two directories is durable as a whole when either is
//!   synced: the file is found under one of its names after a cut, never
//!   under neither.
//! - Nothing else is: `sync_file_range`, `close`, or writes to another file
//!   make nothing durable. (Modes, owners and times are not modelled: they
//!   come back as they were last set.)
//!
//! An unlinked file's data is kept (in a graveyard beside the backing
//! directory, under its inode number) until the cut, since its removal may
//! not be durable. [`Model::cut`] then rebuilds the backing directory as the
//! disk would be after the power came back: the durable tree, each file
//! with its durable contents — and optionally the last write that was not
//! durable torn, part of it there ([`Tear`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The inode number of the root directory (FUSE's).
pub const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What a power cut does to the last write that was not durable, besides
/// losing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Lost whole, like every other write that was not durable.
    None,
    /// Its first `n` bytes (at most) reached the disk.
    KeepPrefix(u64),
    /// Its range reads as zeros (the file's size went out, its data did not).
    Zeros,
}

/// What a cut did.
#[derive(Debug, Default)]
pub struct CutReport {
    /// Files whose contents went back to what was last synced.
    pub files_rolled_back: usize,
    /// Bytes written (or truncated away) since the last sync, summed.
    pub bytes_undone: u64,
    /// Live entries (files and directories) not in the durable tree.
    pub entries_lost: usize,
    /// Entries in the durable tree that were no longer live (removed or
    /// renamed without a sync of their directory): back after the cut.
    pub entries_back: usize,
    /// The torn write, if one was torn: file, offset, bytes kept, length.
    pub torn: Option<(PathBuf, u64, u64, u64, Tear)>,
    /// For a cut armed with [`Model::arm`]: the sync it followed.
    pub after: Option<String>,
    /// The last operations before the cut, oldest first, each with the
    /// thread that asked for it (see [`Model::set_caller`]).
    pub trace: Vec<String>,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} file(s) rolled back ({} bytes), {} entries lost, {} back",
            self.files_rolled_back, self.bytes_undone, self.entries_lost, self.entries_back
        )?;
        if let Some(after) = &self.after {
            write!(f, "; right after {after}")?;
        }
        if let Some((path, offset, kept, len, tear)) = &self.torn {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match tear {
                Tear::Zeros => write!(f, "; torn: {len} bytes of {name} at {offset} zeroed")?,
                _ => write!(f, "; torn: {kept} of {len} bytes of {name} at {offset} kept")?,
            }
        }
        Ok(())
    }
}

struct Node {
    /// Where it is in the live tree; `None` once removed (a removed file's
    /// data then lives in the graveyard).
    link: Option<(u64, OsString)>,
    body: Body,
}

enum Body {
    File(FileState),
    Dir(DirState),
}

#[derive(Default)]
struct FileState {
    /// The size a cut leaves.
    durable_len: u64,
    /// Byte ranges `[start, end)` below `durable_len` whose durable bytes
    /// are saved in `undo` (sorted, disjoint): changed since the last sync.
    saved: Vec<(u64, u64)>,
    undo: Vec<(u64, Vec<u8>)>,
    /// The newest write since the last sync.
    last_write: Option<LastWrite>,
}

struct LastWrite {
    /// Global order of writes.
    seq: u64,
    offset: u64,
    data: Vec<u8>,
}

#[derive(Default)]
struct DirState {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

/// A rename between two directories that neither has synced since.
struct CrossRename {
    ino: u64,
    from: (u64, OsString),
    to: (u64, OsString),
}

pub struct Model {
    root: PathBuf,
    graveyard: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    writes: u64,
    renames: Vec<CrossRename>,
    cut: bool,
    syncs: u64,
    /// Set by the cut, for whoever needs to know without the model.
    cut_flag: Arc<AtomicBool>,
    /// A cut armed to happen after this many more syncs (of directories
    /// only, or of anything), and how.
    armed: Option<(u64, bool, Tear)>,
    /// What an armed cut did.
    armed_report: Option<io::Result<CutReport>>,
    /// The last [`TRACE`] operations, and who asks for the current one.
    trace: VecDeque<String>,
    caller: String,
    thread_names: HashMap<u32, String>,
}

/// How many operations a cut report lists.
const TRACE: usize = 400;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Model {
    /// Takes over `root` as it is: everything in it is durable. Removed
    /// files are kept until the cut in a graveyard beside it (`ROOT` +
    /// `.powercut-graveyard-…`, on the same file system), removed by the
    /// cut or when the model is dropped. Only regular files and
    /// directories are supported.
    pub fn open(root: &Path) -> io::Result<Model> {
        static MODELS: AtomicU64 = AtomicU64::new(0);
        let root = root.canonicalize()?;
        let mut graveyard = root.clone().into_os_string();
        graveyard.push(format!(
            ".powercut-graveyard-{}-{}",
            std::process::id(),
            MODELS.fetch_add(1, Ordering::Relaxed)
        ));
        let graveyard = PathBuf::from(graveyard);
        fs::create_dir(&graveyard)?;
        let mut model = Model {
            root: root.clone(),
            graveyard,
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            writes: 0,
            renames: Vec::new(),
            cut: false,
            syncs: 0,
            cut_flag: Arc::default(),
            armed: None,
            armed_report: None,
            trace: VecDeque::new(),
            caller: String::new(),
            thread_names: HashMap::new(),
        };
        model.nodes.insert(
            ROOT,
            Node {
                link: None,
                body: Body::Dir(DirState::default()),
            },
        );
        model.scan(ROOT, &root)?;
        Ok(model)
    }

    fn scan(&mut self, dir: u64, path: &Path) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let body = if kind.is_dir() {
                Body::Dir(DirState::default())
            } else if kind.is_file() {
                Body::File(FileState {
                    durable_len: entry.metadata()?.len(),
                    ..FileState::default()
                })
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{}: only files and directories are supported",
                        entry.path().display()
                    ),
                ));
            };
            let ino = self.add(dir, entry.file_name(), body);
            if let Some(Body::Dir(d)) = self.nodes.get_mut(&dir).map(|n| &mut n.body) {
                d.durable.insert(entry.file_name(), ino);
            }
            if kind.is_dir() {
                self.scan(ino, &entry.path())?;
            }
        }
        Ok(())
    }

    /// A new node linked (live) at `dir`/`name`.
    fn add(&mut self, dir: u64, name: OsString, body: Body) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                link: Some((dir, name.clone())),
                body,
            },
        );
        self.dir_mut(dir).expect("a directory").live.insert(name, ino);
        ino
    }

    /// Names the thread asking for the next operations in the trace.
    pub fn set_caller(&mut self, tid: u32) {
        let name = self.thread_names.entry(tid).or_insert_with(|| {
            fs::read_to_string(format!("/proc/{tid}/comm"))
                .map_or_else(|_| "?".into(), |s| s.trim().to_owned())
        });
        self.caller = format!("{tid}/{name}");
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{}: {what}", self.caller));
    }

    /// A path for the trace.
    fn shown(&self, ino: u64) -> String {
        match self.path(ino) {
            Ok(p) => match p.strip_prefix(&self.root) {
                Ok(p) => p.display().to_string(),
                Err(_) => format!("(removed #{ino})"),
            },
            Err(_) => format!("#{ino}"),
        }
    }

    /// The backing directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// A flag the cut sets (before anything fails because of it).
    pub fn cut_flag(&self) -> Arc<AtomicBool> {
        self.cut_flag.clone()
    }

    fn alive(&self) -> io::Result<()> {
        if self.cut { Err(errno(libc::EIO)) } else { Ok(()) }
    }

    fn node(&self, ino: u64) -> io::Result<&Node> {
        self.nodes.get(&ino).ok_or_else(|| errno(libc::ENOENT))
    }

    fn dir(&self, ino: u64) -> io::Result<&DirState> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(errno(libc::ENOTDIR)),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> io::Result<&mut DirState> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::Dir(d)) => Ok(d),
            Some(Body::File(_)) => Err(errno(libc::ENOTDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    fn file_mut(&mut self, ino: u64) -> io::Result<&mut FileState> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.body) {
            Some(Body::File(f)) => Ok(f),
            Some(Body::Dir(_)) => Err(errno(libc::EISDIR)),
            None => Err(errno(libc::ENOENT)),
        }
    }

    pub fn kind(&self, ino: u64) -> io::Result<Kind> {
        Ok(match self.node(ino)?.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        })
    }

    /// Where `ino` is in the backing directory now: its live path, or for a
    /// removed file its place in the graveyard.
    pub fn path(&self, ino: u64) -> io::Result<PathBuf> {
        if ino == ROOT {
            return Ok(self.root.clone());
        }
        let node = self.node(ino)?;
        match (&node.link, &node.body) {
            (Some((dir, name)), _) => Ok(self.path(*dir)?.join(name)),
            (None, Body::File(_)) => Ok(self.graveyard.join(ino.to_string())),
            (None, Body::Dir(_)) => Err(errno(libc::ENOENT)),
        }
    }

    pub fn lookup(&self, dir: u64, name: &OsStr) -> io::Result<u64> {
        self.alive()?;
        self.dir(dir)?
            .live
            .get(name)
            .copied()
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// The live entries of `dir`, by name.
    pub fn entries(&self, dir: u64) -> io::Result<Vec<(OsString, u64, Kind)>> {
        self.alive()?;
        self.dir(dir)?
            .live
            .iter()
            .map(|(name, ino)| Ok((name.clone(), *ino, self.kind(*ino)?)))
            .collect()
    }

    /// The parent of a live directory (the root's is itself).
    pub fn parent(&self, ino: u64) -> u64 {
        self.nodes
            .get(&ino)
            .and_then(|n| n.link.as_ref())
            .map_or(ROOT, |(dir, _)| *dir)
    }

    /// Checks that `name` may be added to `dir`, and returns its path.
    fn new_entry(&self, dir: u64, name: &OsStr) -> io::Result<PathBuf> {
        self.alive()?;
        let d = self.dir(dir)?;
        if d.live.contains_key(name) {
            return Err(errno(libc::EEXIST));
        }
        Ok(self.path(dir)?.join(name))
    }

    /// Creates an empty file; durable (as an entry) once `dir` is synced.
    pub fn create(&mut self, dir: u64, name: &OsStr, mode: u32) -> io::Result<u64> {
        let path = self.new_entry(dir, name)?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        let ino = self.add(dir, name.to_owned(), Body::File(FileState::default()));
        self.note(format!("create {}", self.shown(ino)));
        Ok(ino)
    }

    pub fn mkdir(&mut self, dir: u64, name: &OsStr, mode: u32) -> io::Result<u64> {
        let path = self.new_entry(dir, name)?;
        fs::DirBuilder::new().mode(mode).create(path)?;
        let ino = self.add(dir, name.to_owned(), Body::Dir(DirState::default()));
        self.note(format!("mkdir {}", self.shown(ino)));
        Ok(ino)
    }

    /// Takes `ino` out of the live tree (its data, if a file, to the
    /// graveyard).
    fn detach(&mut self, ino: u64) -> io::Result<()> {
        let path = self.path(ino)?;
        self.note(format!("remove {}", self.shown(ino)));
        match self.kind(ino)? {
            Kind::File => fs::rename(&path, self.graveyard.join(ino.to_string()))?,
            Kind::Dir => fs::remove_dir(&path)?,
        }
        let node = self.nodes.get_mut(&ino).expect("a node");
        if let Some((dir, name)) = node.link.take() {
            self.dir_mut(dir)?.live.remove(&name);
        }
        Ok(())
    }

    pub fn unlink(&mut self, dir: u64, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(dir, name)?;
        if self.kind(ino)? == Kind::Dir {
            return Err(errno(libc::EISDIR));
        }
        self.detach(ino)
    }

    pub fn rmdir(&mut self, dir: u64, name: &OsStr) -> io::Result<()> {
        let ino = self.lookup(dir, name)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.detach(ino)
    }

    /// `rename(2)`; `no_replace` is `RENAME_NOREPLACE`.
    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> io::Result<()> {
        let ino = self.lookup(dir, name)?;
        let kind = self.kind(ino)?;
        self.dir(new_dir)?;
        // Not into itself.
        let mut up = new_dir;
        while up != ROOT {
            if up == ino {
                return Err(errno(libc::EINVAL));
            }
            up = self.parent(up);
        }
        if let Some(&target) = self.dir(new_dir)?.live.get(new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(errno(libc::EEXIST));
            }
            match (kind, self.kind(target)?) {
                (Kind::File, Kind::Dir) => return Err(errno(libc::EISDIR)),
                (Kind::Dir, Kind::File) => return Err(errno(libc::ENOTDIR)),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.live.is_empty() => {
                    return Err(errno(libc::ENOTEMPTY));
                }
                _ => {}
            }
            self.detach(target)?;
        }
        let from = self.shown(ino);
        fs::rename(self.path(ino)?, self.path(new_dir)?.join(new_name))?;
        self.dir_mut(dir)?.live.remove(name);
        self.dir_mut(new_dir)?.live.insert(new_name.to_owned(), ino);
        self.nodes.get_mut(&ino).expect("a node").link = Some((new_dir, new_name.to_owned()));
        self.note(format!("rename {from} to {}", self.shown(ino)));
        if dir != new_dir {
            self.renames.push(CrossRename {
                ino,
                from: (dir, name.to_owned()),
                to: (new_dir, new_name.to_owned()),
            });
        }
        Ok(())
    }

    /// Saves the durable bytes in `[start, end)` of `ino` that are not
    /// saved yet, before they are overwritten.
    fn preserve(&mut self, ino: u64, start: u64, end: u64) -> io::Result<()> {
        let path = self.path(ino)?;
        let state = self.file_mut(ino)?;
        let end = end.min(state.durable_len);
        if start >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut at = start;
        for &(s, e) in &state.saved {
            if e <= at {
                continue;
            }
            if s >= end {
                break;
            }
            if s > at {
                gaps.push((at, s));
            }
            at = at.max(e);
            if at >= end {
                break;
            }
        }
        if at < end {
            gaps.push((at, end));
        }
        if gaps.is_empty() {
            return Ok(());
        }
        let file = File::open(&path)?;
        for (s, e) in gaps {
            let mut bytes = vec![0; (e - s) as usize];
            let mut read = 0;
            while read < bytes.len() {
                match file.read_at(&mut bytes[read..], s + read as u64)? {
                    0 => break, // (cannot happen: see `saved`) zeros then
                    n => read += n,
                }
            }
            state.undo.push((s, bytes));
            state.saved.push((s, e));
        }
        state.saved.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(state.saved.len());
        for (s, e) in state.saved.drain(..) {
            match merged.last_mut() {
                Some(last) if last.1 >= s => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        state.saved = merged;
        Ok(())
    }

    /// `pwrite` of `data` at `offset` into `ino` through `file` (opened on
    /// it for writing).
    pub fn write(&mut self, ino: u64, file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        self.alive()?;
        self.preserve(ino, offset, offset + data.len() as u64)?;
        file.write_all_at(data, offset)?;
        self.note(format!(
            "write {} [{offset}, {})",
            self.shown(ino),
            offset + data.len() as u64
        ));
        self.writes += 1;
        let seq = self.writes;
        self.file_mut(ino)?.last_write = Some(LastWrite {
            seq,
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    /// `truncate(2)` or an extension to `len`.
    pub fn set_len(&mut self, ino: u64, len: u64) -> io::Result<()> {
        self.alive()?;
        let path = self.path(ino)?;
        let current = fs::metadata(&path)?.len();
        if len < current {
            self.preserve(ino, len, current)?;
        }
        self.note(format!("set_len {} {current} -> {len}", self.shown(ino)));
        OpenOptions::new().write(true).open(&path)?.set_len(len)
    }

    /// `fallocate(2)`: allocating (which changes no data), punching a hole
    /// or zeroing a range; other modes are not supported.
    pub fn fallocate(&mut self, ino: u64, file: &File, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        self.alive()?;
        let changes_data = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | changes_data) != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if mode & changes_data != 0 {
            self.preserve(ino, offset, offset.saturating_add(len))?;
        }
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(errno(libc::EINVAL));
        };
        // SAFETY: a valid descriptor, plain integers.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Arms a cut to happen right after the `syncs`-th sync from now (of
    /// a directory, with `dirs_only`; else of a file or a directory),
    /// before that sync returns: the moments between two syncs are where an
    /// ordering mistake shows.
    pub fn arm(&mut self, syncs: u64, dirs_only: bool, tear: Tear) {
        self.armed = Some((syncs.max(1), dirs_only, tear));
    }

    /// What the armed cut did, once it has happened.
    pub fn armed_report(&mut self) -> Option<io::Result<CutReport>> {
        self.armed_report.take()
    }

    /// `fsync`/`fdatasync` of `ino`: a file's data and size, or a
    /// directory's entries, become durable (and an armed cut may follow).
    pub fn fsync(&mut self, ino: u64) -> io::Result<()> {
        self.sync(ino)?;
        let dir = self.kind(ino)? == Kind::Dir;
        if let Some((n, dirs_only, tear)) = &mut self.armed
            && (dir || !*dirs_only)
        {
            *n -= 1;
            if *n == 0 {
                let tear = *tear;
                let after = format!(
                    "the sync of {} ({:?})",
                    self.path(ino)?
                        .strip_prefix(&self.root)
                        .unwrap_or(Path::new("(a removed file)"))
                        .display(),
                    self.kind(ino)?
                );
                let report = self.cut(tear).map(|r| CutReport {
                    after: Some(after),
                    ..r
                });
                self.armed_report = Some(report);
            }
        }
        Ok(())
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    fn sync(&mut self, ino: u64) -> io::Result<()> {
        self.alive()?;
        self.syncs += 1;
        self.note(format!("fsync {} ({:?})", self.shown(ino), self.kind(ino)?));
        match self.kind(ino)? {
            Kind::File => {
                let len = fs::metadata(self.path(ino)?)?.len();
                let state = self.file_mut(ino)?;
                *state = FileState {
                    durable_len: len,
                    ..FileState::default()
                };
            }
            Kind::Dir => {
                let d = self.dir_mut(ino)?;
                d.durable = d.live.clone();
                // A rename between directories is durable as a whole.
                let (touching, rest) = std::mem::take(&mut self.renames)
                    .into_iter()
                    .partition::<Vec<_>, _>(|r| r.from.0 == ino || r.to.0 == ino);
                self.renames = rest;
                for r in touching {
                    if r.to.0 != ino {
                        self.dir_mut(r.to.0)?.durable.insert(r.to.1, r.ino);
                    } else {
                        let from = self.dir_mut(r.from.0)?;
                        if from.durable.get(&r.from.1) == Some(&r.ino) {
                            from.durable.remove(&r.from.1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The power cut: every later operation fails with EIO, and the backing
    /// directory becomes what the disk holds when the power comes back.
    pub fn cut(&mut self, tear: Tear) -> io::Result<CutReport> {
        self.alive()?;
        self.cut = true;
        self.cut_flag.store(true, Ordering::SeqCst);
        self.armed = None;
        let mut report = CutReport {
            trace: self.trace.drain(..).collect(),
            ..CutReport::default()
        };

        // File data: back to what was synced.
        let mut files: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n.body, Body::File(_)))
            .map(|(ino, _)| *ino)
            .collect();
        files.sort_unstable();
        let mut newest: Option<(u64, u64)> = None; // (seq, ino)
        for &ino in &files {
            let path = self.path(ino)?;
            let Some(Node {
                body: Body::File(state),
                ..
            }) = self.nodes.get(&ino)
            else {
                unreachable!()
            };
            if let Some(w) = &state.last_write
                && newest.is_none_or(|(seq, _)| w.seq > seq)
            {
                newest = Some((w.seq, ino));
            }
            let len = fs::metadata(&path)?.len();
            if len == state.durable_len && state.undo.is_empty() {
                continue;
            }
            report.files_rolled_back += 1;
            report.bytes_undone +=
                len.saturating_sub(state.durable_len) + state.saved.iter().map(|(s, e)| e - s).sum::<u64>();
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(state.durable_len)?;
            for (offset, bytes) in &state.undo {
                file.write_all_at(bytes, *offset)?;
            }
            report.trace.push(format!(
                "cut: {} back from {len} to {} bytes, {} bytes in it restored",
                self.shown(ino),
                state.durable_len,
                state.saved.iter().map(|(s, e)| e - s).sum::<u64>()
            ));
        }
        if let (Some((_, ino)), false) = (newest, tear == Tear::None) {
            let path = self.path(ino)?;
            let Some(Node {
                body: Body::File(state),
                ..
            }) = self.nodes.get(&ino)
            else {
                unreachable!()
            };
            let w = state.last_write.as_ref().expect("the newest write");
            let file = OpenOptions::new().write(true).open(&path)?;
            let len = w.data.len() as u64;
            let kept = match tear {
                Tear::KeepPrefix(n) => {
                    let n = n.min(len);
                    file.write_all_at(&w.data[..n as usize], w.offset)?;
                    n
                }
                Tear::Zeros => {
                    file.write_all_at(&vec![0; w.data.len()], w.offset)?;
                    0
                }
                Tear::None => 0,
            };
            report.torn = Some((path, w.offset, kept, len, tear));
        }

        // The tree: every file to the graveyard, the directories away, then
        // the durable tree built again.
        for &ino in &files {
            if self.nodes[&ino].link.is_some() {
                fs::rename(self.path(ino)?, self.graveyard.join(ino.to_string()))?;
            }
        }
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())?;
            } else {
                fs::remove_file(entry.path())?;
            }
        }
        let mut placed: HashMap<u64, PathBuf> = HashMap::new();
        let mut links: BTreeSet<(u64, OsString, u64)> = BTreeSet::new();
        let mut visited: BTreeSet<u64> = [ROOT].into();
        let mut todo = vec![(ROOT, self.root.clone())];
        while let Some((dir, path)) = todo.pop() {
            for (name, &ino) in &self.dir(dir)?.durable {
                let target = path.join(name);
                match self.kind(ino)? {
                    Kind::Dir => {
                        // (A directory durable under two names, after
                        // renames between directories: the first wins.)
                        if !visited.insert(ino) {
                            continue;
                        }
                        fs::create_dir(&target)?;
                        todo.push((ino, target));
                    }
                    Kind::File => match placed.get(&ino) {
                        Some(first) => {
                            fs::copy(first, &target)?;
                        }
                        None => {
                            fs::rename(self.graveyard.join(ino.to_string()), &target)?;
                            placed.insert(ino, target);
                        }
                    },
                }
                links.insert((dir, name.clone(), ino));
            }
        }
        for (&ino, node) in &self.nodes {
            if let Some((dir, name)) = &node.link
                && !links.contains(&(*dir, name.clone(), ino))
            {
                report.entries_lost += 1;
            }
        }
        report.entries_back = links
            .iter()
            .filter(|(dir, name, ino)| self.nodes[ino].link.as_ref() != Some(&(*dir, name.clone())))
            .count();
        fs::remove_dir_all(&self.graveyard)?;
        Ok(report)
    }
}

impl Drop for Model {
    /// Without a cut, the graveyard holds only removed files: gone.
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.graveyard);
    }
}

#[cfg(test)]
mod tests {
    //! The durability model on its own, without FUSE: each case does what
    //! the kernel would forward, cuts, and reads the backing directory.

    use super::*;

    struct Case {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        model: Model,
    }

    /// A backing directory holding `files` (durable: they were there at
    /// mount) and the model over it.
    fn case(files: &[(&str, &[u8])]) -> Case {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("backing");
        fs::create_dir(&root).unwrap();
        for (name, data) in files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, data).unwrap();
        }
        let model = Model::open(&root).unwrap();
        Case {
            _tmp: tmp,
            root,
            model,
        }
    }

    impl Case {
        fn ino(&self, path: &str) -> u64 {
            path.split('/').filter(|c| !c.is_empty()).fold(ROOT, |dir, name| {
                self.model.lookup(dir, OsStr::new(name)).unwrap()
            })
        }

        fn write(&mut self, path: &str, offset: u64, data: &[u8]) {
            let ino = self.ino(path);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.model.path(ino).unwrap())
                .unwrap();
            self.model.write(ino, &file, offset, data).unwrap();
        }

        fn create(&mut self, dir: &str, name: &str) -> u64 {
            let dir = self.ino(dir);
            self.model.create(dir, OsStr::new(name), 0o644).unwrap()
        }

        fn sync(&mut self, path: &str) {
            let ino = self.ino(path);
            self.model.fsync(ino).unwrap();
        }

        fn cut(&mut self, tear: Tear) -> CutReport {
            self.model.cut(tear).unwrap()
        }

        /// A file's contents after the cut, or `None` when it is not there.
        fn read(&self, path: &str) -> Option<Vec<u8>> {
            fs::read(self.root.join(path)).ok()
        }

        /// Every path under the root, sorted, directories ending in `/`.
        fn tree(&self) -> Vec<String> {
            fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
                for e in fs::read_dir(dir).unwrap() {
                    let e = e.unwrap();
                    let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                    if e.file_type().unwrap().is_dir() {
                        out.push(format!("{name}/"));
                        walk(&e.path(), &format!("{name}/"), out);
                    } else {
                        out.push(name);
                    }
                }
            }
            let mut out = Vec::new();
            walk(&self.root, "", &mut out);
            out.sort();
            out
        }
    }

    #[test]
    fn a_write_without_fsync_is_gone_after_a_cut() {
        let mut c = case(&[("a", b"durable")]);
        c.write("a", 0, b"DUR");
        c.write("a", 7, b" and more");
        assert_eq!(fs::read(c.root.join("a")).unwrap(), b"DURable and more");
        let report = c.cut(Tear::None);
        assert_eq!(c.read("a").unwrap(), b"durable");
        assert_eq!(report.files_rolled_back, 1);
    }

    #[test]
    fn a_write_with_fsync_is_kept() {
        let mut c = case(&[("a", b"durable")]);
        c.write("a", 0, b"DUR");
        c.write("a", 7, b" and more");
        c.sync("a");
        c.write("a", 0, b"lost");
        c.cut(Tear::None);
        assert_eq!(c.read("a").unwrap(), b"DURable and more");
    }

    #[test]
    fn overwrites_and_truncations_roll_back_to_the_synced_bytes() {
        let mut c = case(&[("a", b"0123456789")]);
        c.write("a", 2, b"ab");
        let ino = c.ino("a");
        c.model.set_len(ino, 4).unwrap();
        c.write("a", 8, b"XY");
        c.write("a", 1, b"!!!");
        c.model.set_len(ino, 1).unwrap();
        c.model.set_len(ino, 20).unwrap();
        c.cut(Tear::None);
        assert_eq!(c.read("a").unwrap(), b"0123456789");

        let mut c = case(&[("a", b"0123456789")]);
        c.write("a", 2, b"ab");
        let ino = c.ino("a");
        c.model.set_len(ino, 4).unwrap();
        c.write("a", 6, b"XY");
        c.sync("a");
        c.write("a", 0, b"zzzzzzzzzzzzzz");
        c.cut(Tear::None);
        assert_eq!(c.read("a").unwrap(), b"01ab\0\0XY");
    }

    #[test]
    fn a_file_created_and_fsynced_in_a_directory_not_fsynced_is_gone() {
        let mut c = case(&[("keep", b"k")]);
        c.create("", "new");
        c.write("new", 0, b"data");
        c.sync("new");
        let report = c.cut(Tear::None);
        assert_eq!(c.tree(), ["keep"]);
        assert_eq!(report.entries_lost, 1);
    }

    #[test]
    fn a_new_entry_is_durable_with_its_directory_and_its_data_with_the_file() {
        // Directory synced, file not: there, empty.
        let mut c = case(&[]);
        c.create("", "new");
        c.write("new", 0, b"data");
        c.sync("");
        c.cut(Tear::None);
        assert_eq!(c.read("new").unwrap(), b"");

        // Both synced, in either order.
        let mut c = case(&[]);
        c.create("", "new");
        c.sync("");
        c.write("new", 0, b"data");
        c.sync("new");
        c.cut(Tear::None);
        assert_eq!(c.read("new").unwrap(), b"data");
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced() {
        let mut c = case(&[]);
        let d = c.ino("");
        c.model.mkdir(d, OsStr::new("d"), 0o755).unwrap();
        c.create("d", "f");
        c.write("d/f", 0, b"data");
        c.sync("d/f");
        c.sync("d");
        c.cut(Tear::None);
        assert!(c.tree().is_empty(), "{:?}", c.tree());

        let mut c = case(&[]);
        c.model.mkdir(ROOT, OsStr::new("d"), 0o755).unwrap();
        c.create("d", "f");
        c.write("d/f", 0, b"data");
        c.sync("d/f");
        c.sync("d");
        c.sync("");
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["d/", "d/f"]);
        assert_eq!(c.read("d/f").unwrap(), b"data");
    }

    #[test]
    fn a_removal_is_durable_only_with_its_directory() {
        let mut c = case(&[("a", b"A"), ("b", b"B")]);
        c.write("a", 0, b"changed, synced");
        c.sync("a");
        c.model.unlink(ROOT, OsStr::new("a")).unwrap();
        c.model.unlink(ROOT, OsStr::new("b")).unwrap();
        assert!(c.model.lookup(ROOT, OsStr::new("a")).is_err());
        let report = c.cut(Tear::None);
        assert_eq!(c.tree(), ["a", "b"]);
        assert_eq!(c.read("a").unwrap(), b"changed, synced");
        assert_eq!(report.entries_back, 2);

        let mut c = case(&[("a", b"A"), ("b", b"B")]);
        c.model.unlink(ROOT, OsStr::new("a")).unwrap();
        c.sync("");
        c.model.unlink(ROOT, OsStr::new("b")).unwrap();
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["b"]);
    }

    #[test]
    fn a_rename_is_durable_only_with_its_directory() {
        // Not synced: the old name, with the old contents of the target.
        let mut c = case(&[("a", b"A"), ("b", b"B")]);
        c.model
            .rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), false)
            .unwrap();
        c.model
            .rename(ROOT, OsStr::new("b"), ROOT, OsStr::new("c"), false)
            .unwrap();
        assert_eq!(fs::read(c.root.join("c")).unwrap(), b"A");
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["a", "b"]);
        assert_eq!(
            (c.read("a").unwrap(), c.read("b").unwrap()),
            (b"A".to_vec(), b"B".to_vec())
        );

        // Synced: the new name only, the replaced file gone.
        let mut c = case(&[("a", b"A"), ("b", b"B")]);
        c.model
            .rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), false)
            .unwrap();
        c.sync("");
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["b"]);
        assert_eq!(c.read("b").unwrap(), b"A");

        // The temp-file pattern: write, fsync, rename, no directory sync:
        // the old file stays, the temporary one is gone.
        let mut c = case(&[("conf", b"old")]);
        c.create("", "conf.tmp");
        c.write("conf.tmp", 0, b"new");
        c.sync("conf.tmp");
        c.model
            .rename(ROOT, OsStr::new("conf.tmp"), ROOT, OsStr::new("conf"), false)
            .unwrap();
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["conf"]);
        assert_eq!(c.read("conf").unwrap(), b"old");

        // No replacing with RENAME_NOREPLACE, nor a directory into itself.
        let mut c = case(&[("a", b"A"), ("b", b"B"), ("d/x", b"X")]);
        let e = c
            .model
            .rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), true)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let d = c.ino("d");
        let e = c
            .model
            .rename(ROOT, OsStr::new("d"), d, OsStr::new("d2"), false)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn a_rename_between_directories_is_durable_whole_when_either_is_synced() {
        for synced in ["from", "to"] {
            let mut c = case(&[("from/x", b"X"), ("to/keep", b"K")]);
            let (from, to) = (c.ino("from"), c.ino("to"));
            c.model
                .rename(from, OsStr::new("x"), to, OsStr::new("y"), false)
                .unwrap();
            c.sync(synced);
            c.cut(Tear::None);
            assert_eq!(c.tree(), ["from/", "to/", "to/keep", "to/y"], "{synced} synced");
            assert_eq!(c.read("to/y").unwrap(), b"X");
        }
        let mut c = case(&[("from/x", b"X"), ("to/keep", b"K")]);
        let (from, to) = (c.ino("from"), c.ino("to"));
        c.model
            .rename(from, OsStr::new("x"), to, OsStr::new("y"), false)
            .unwrap();
        c.cut(Tear::None);
        assert_eq!(c.tree(), ["from/", "from/x", "to/", "to/keep"]);
    }

    #[test]
    fn the_last_unsynced_write_can_be_torn() {
        for (tear, expected) in [
            (Tear::None, b"".to_vec()),
            (Tear::KeepPrefix(100), vec![b'y'; 100]),
            (Tear::KeepPrefix(5000), vec![b'y'; 1000]),
            (Tear::Zeros, vec![0; 1000]),
        ] {
            let mut c = case(&[("a", b""), ("b", b"")]);
            c.write("b", 0, &[b'x'; 1000]);
            c.write("a", 0, &[b'y'; 1000]);
            c.write("b", 0, &[b'x'; 10]);
            c.sync("b");
            let report = c.cut(tear);
            assert_eq!(c.read("a").unwrap(), expected, "{tear:?}");
            assert_eq!(c.read("b").unwrap(), [b'x'; 1000], "{tear:?}");
            assert_eq!(report.torn.is_some(), tear != Tear::None, "{report}");
        }
    }

    #[test]
    fn an_armed_cut_follows_the_nth_sync() {
        let mut c = case(&[("a", b""), ("b", b"")]);
        c.model.arm(2, false, Tear::None);
        c.write("a", 0, b"A");
        c.sync("a");
        assert!(c.model.armed_report().is_none());
        c.write("b", 0, b"B");
        c.write("a", 1, b"lost");
        c.sync("b"); // durable, then the power goes
        let report = c.model.armed_report().unwrap().unwrap();
        assert!(report.after.unwrap().contains("the sync of b"));
        let ino = c.model.nodes.keys().copied().max().unwrap();
        assert_eq!(c.model.fsync(ino).unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(
            (c.read("a").unwrap(), c.read("b").unwrap()),
            (b"A".to_vec(), b"B".to_vec())
        );

        // Counting directory syncs only.
        let mut c = case(&[("d/a", b"")]);
        c.model.arm(1, true, Tear::None);
        c.write("d/a", 0, b"A");
        c.sync("d/a");
        assert!(c.model.armed_report().is_none());
        c.create("d", "b");
        c.sync("d");
        let report = c.model.armed_report().unwrap().unwrap();
        assert!(report.after.unwrap().contains("the sync of d (Dir)"));
        assert_eq!(c.tree(), ["d/", "d/a", "d/b"]);
        assert_eq!(c.read("d/a").unwrap(), b"A");
    }

    #[test]
    fn after_the_cut_everything_fails_with_eio() {
        let mut c = case(&[("a", b"A")]);
        let ino = c.ino("a");
        c.cut(Tear::None);
        let eio = Some(libc::EIO);
        assert_eq!(
            c.model.lookup(ROOT, OsStr::new("a")).unwrap_err().raw_os_error(),
            eio
        );
        assert_eq!(c.model.fsync(ino).unwrap_err().raw_os_error(), eio);
        assert_eq!(
            c.model
                .create(ROOT, OsStr::new("b"), 0o644)
                .unwrap_err()
                .raw_os_error(),
            eio
        );
        assert_eq!(c.model.set_len(ino, 0).unwrap_err().raw_os_error(), eio);
        assert_eq!(c.model.cut(Tear::None).unwrap_err().raw_os_error(), eio);
        assert_eq!(c.read("a").unwrap(), b"A");
    }
}
