//! A store as one file: every key and value of the sled tree, the command
//! log position they hold, and a BLAKE3 digest of it all. A cluster node
//! publishes such files so that a new node restores one instead of
//! replaying the whole log.
//!
//! Layout: `TWSNAP01`, the store format (u32 BE), the log position (u64
//! BE), then per entry the key's length (u32 BE), the key, the value's
//! length (u32 BE), the value; then `u32::MAX` and the 32-byte digest of
//! everything before it.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{FORMAT_VERSION, UPGRADABLE_FORMATS, keys};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"TWSNAP01";
/// The file in the data dir a snapshot is exported to (sled leaves files
/// it does not know alone).
pub const EXPORT_FILE: &str = "tradewatch-snapshot.export";
const END: u32 = u32::MAX;
/// Larger keys or values than sled's store are damage, not data.
const MAX_ENTRY_BYTES: u32 = 1 << 30;
/// Entries restored per sled batch.
const RESTORE_BATCH: usize = 10_000;

/// Writes every entry of `db`, which holds the log up to `position`, to a
/// new file at `path`.
pub fn export(db: &sled::Db, position: u64, path: &Path) -> Result<()> {
    let failed = |e: std::io::Error| Error::Unavailable(format!("writing snapshot {}: {e}", path.display()));
    let file = std::fs::File::create(path).map_err(failed)?;
    let mut out = Digesting::new(BufWriter::with_capacity(1 << 20, file));
    out.write_all(MAGIC).map_err(failed)?;
    out.write_all(&FORMAT_VERSION.to_be_bytes()).map_err(failed)?;
    out.write_all(&position.to_be_bytes()).map_err(failed)?;
    for entry in db.iter() {
        let (k, v) = entry?;
        for part in [k.as_ref(), v.as_ref()] {
            let len = u32::try_from(part.len())
                .map_err(|_| Error::Corrupt(format!("a store entry of {} bytes", part.len())))?;
            out.write_all(&len.to_be_bytes()).map_err(failed)?;
            out.write_all(part).map_err(failed)?;
        }
    }
    out.write_all(&END.to_be_bytes()).map_err(failed)?;
    let digest = out.hasher.finalize();
    let mut file = out.inner;
    file.write_all(digest.as_bytes()).map_err(failed)?;
    let file = file.into_inner().map_err(|e| failed(e.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok(())
}

/// Builds a store in `dir` (which must not exist) from the snapshot file
/// at `path`, checking its digest; returns the log position it holds. The
/// store is built beside `dir` and moved into place when whole, so a crash
/// midway leaves no half store.
pub fn restore(path: &Path, dir: &Path) -> Result<u64> {
    let bad = |what: String| Error::FailedPrecondition(format!("snapshot {}: {what}", path.display()));
    let io = |e: std::io::Error| bad(e.to_string());
    let file = std::fs::File::open(path).map_err(io)?;
    let mut input = Digesting::new(BufReader::with_capacity(1 << 20, file));
    let mut magic = [0; 8];
    input.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(bad("not a tradewatch snapshot".into()));
    }
    let format = u32::from_be_bytes(read_array(&mut input).map_err(io)?);
    if format != FORMAT_VERSION && !UPGRADABLE_FORMATS.contains(&format) {
        return Err(bad(format!(
            "a store of format {format}; this build reads format {FORMAT_VERSION}"
        )));
    }
    let position = u64::from_be_bytes(read_array(&mut input).map_err(io)?);
    let building = dir.with_extension("restoring");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(io)?;
    }
    {
        let db = sled::Config::new().path(&building).open()?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        let mut entries = 0u64;
        loop {
            let len = u32::from_be_bytes(read_array(&mut input).map_err(io)?);
            if len == END {
                break;
            }
            let key = read_vec(&mut input, len).map_err(io)?;
            let len = u32::from_be_bytes(read_array(&mut input).map_err(io)?);
            let value = read_vec(&mut input, len).map_err(io)?;
            batch.insert(key, value);
            in_batch += 1;
            entries += 1;
            if in_batch == RESTORE_BATCH {
                db.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        let digest = input.hasher.finalize();
        let mut stored = [0; 32];
        input.inner.read_exact(&mut stored).map_err(io)?;
        if digest.as_bytes() != &stored {
            return Err(bad(
                "its digest does not match its content (damaged in transit?)".into()
            ));
        }
        db.apply_batch(batch)?;
        let held = db
            .get(keys::META_LOG_POSITION)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        if held != position {
            return Err(bad(format!(
                "says log position {position} but its store holds {held}"
            )));
        }
        db.flush()?;
        tracing::info!(entries, position, "snapshot restored");
    }
    std::fs::rename(&building, dir).map_err(io)?;
    Ok(position)
}

fn read_array<const N: usize>(input: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut buf = [0; N];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

fn read_vec(input: &mut impl Read, len: u32) -> std::io::Result<Vec<u8>> {
    if len > MAX_ENTRY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("an entry of {len} bytes (damaged?)"),
        ));
    }
    let mut buf = vec![0; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// A reader or writer that digests what passes through it.
struct Digesting<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<T> Digesting<T> {
    fn new(inner: T) -> Self {
        Digesting {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_comes_back_whole_and_a_damaged_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let source = sled::Config::new()
            .path(tmp.path().join("source"))
            .open()
            .unwrap();
        for i in 0u32..25_000 {
            source
                .insert(i.to_be_bytes(), vec![7u8; (i % 50) as usize])
                .unwrap();
        }
        source
            .insert(keys::META_LOG_POSITION, &42u64.to_be_bytes())
            .unwrap();
        let file = tmp.path().join("snap");
        export(&source, 42, &file).unwrap();

        let restored_dir = tmp.path().join("restored");
        assert_eq!(restore(&file, &restored_dir).unwrap(), 42);
        // sled lets go of a closed store's lock a moment after (as a
        // restart does, `Store::open` waits for it).
        let started = std::time::Instant::now();
        let restored = loop {
            match sled::Config::new().path(&restored_dir).open() {
                Ok(db) => break db,
                Err(_) if started.elapsed() < std::time::Duration::from_secs(2) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(
            source
                .iter()
                .map(Result::unwrap)
                .eq(restored.iter().map(Result::unwrap))
        );

        // The last value's last byte: the log position's, sorting last.
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 32 - 4 - 1;
        bytes[at] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let err = restore(&file, &tmp.path().join("other")).unwrap_err();
        assert!(err.to_string().contains("digest does not match"), "{err}");
        assert!(!tmp.path().join("other").exists());
    }
}
