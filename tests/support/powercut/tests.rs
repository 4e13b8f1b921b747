//! The file system mounted, driven by real system calls through the kernel.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{PowerCut, Tear, can_mount};

/// A mount over a backing directory that holds `durable` (name, data),
/// or `None` (and why, on stderr) where FUSE cannot be mounted.
fn mount(durable: &[(&str, &[u8])]) -> Option<(tempfile::TempDir, PathBuf, PowerCut)> {
    if let Err(why) = can_mount() {
        if std::env::var_os("TRADEWATCH_REQUIRE_FUSE").is_some() {
            panic!("TRADEWATCH_REQUIRE_FUSE is set, but {why}");
        }
        eprintln!("skipped: {why}");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (backing, mnt) = (tmp.path().join("backing"), tmp.path().join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    for (name, data) in durable {
        fs::write(backing.join(name), data).unwrap();
    }
    let fs = PowerCut::mount(&backing, &mnt).expect("mounts");
    Some((tmp, mnt, fs))
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

/// `sync_file_range(fd, 0, 0, WAIT_BEFORE | WRITE | WAIT_AFTER)`, as sled
/// ends a flush with.
fn sync_file_range(file: &File) {
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor, plain integers.
    let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    assert_eq!(ret, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn mounted_only_fsync_makes_data_and_entries_durable() {
    let Some((tmp, mnt, fs)) = mount(&[("old", b"durable"), ("renamed", b"R"), ("removed", b"gone?")]) else {
        return;
    };
    // Written and "flushed" the sled way: not durable.
    let mut old = OpenOptions::new().write(true).open(mnt.join("old")).unwrap();
    old.write_all(b"DURABLE, and more").unwrap();
    sync_file_range(&old);
    drop(old);
    assert_eq!(fs::read(mnt.join("old")).unwrap(), b"DURABLE, and more");

    // Created, written, fsynced, its directory not: gone.
    let mut lost = File::create(mnt.join("lost")).unwrap();
    lost.write_all(b"data").unwrap();
    lost.sync_all().unwrap();

    // In a new directory, everything synced: kept.
    fs::create_dir(mnt.join("dir")).unwrap();
    let mut kept = File::create(mnt.join("dir/kept")).unwrap();
    kept.write_all(b"kept").unwrap();
    kept.sync_data().unwrap();
    sync_dir(&mnt.join("dir"));

    // Renamed and removed without a sync of the root: undone.
    fs::rename(mnt.join("renamed"), mnt.join("new-name")).unwrap();
    fs::remove_file(mnt.join("removed")).unwrap();
    assert!(!mnt.join("removed").exists());
    // The root is never synced: the new directory's entry is not durable,
    // and so neither is the file synced in it.

    drop((lost, kept));

    let report = fs.cut(Tear::None).unwrap();
    eprintln!("cut: {report}");
    // Everything on the mount now fails.
    let after = fs::read(mnt.join("old")).unwrap_err();
    assert_eq!(after.raw_os_error(), Some(libc::EIO), "{after}");
    fs.unmount().unwrap();

    let backing = tmp.path().join("backing");
    let mut names: Vec<String> = fs::read_dir(&backing)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["old", "removed", "renamed"]);
    assert_eq!(fs::read(backing.join("old")).unwrap(), b"durable");
    assert_eq!(fs::read(backing.join("renamed")).unwrap(), b"R");
    assert_eq!(fs::read(backing.join("removed")).unwrap(), b"gone?");
}

#[test]
fn mounted_synced_changes_survive_and_remount_sees_them() {
    let Some((tmp, mnt, fs)) = mount(&[("conf", b"old")]) else {
        return;
    };
    fs::create_dir(mnt.join("dir")).unwrap();
    let mut f = File::create(mnt.join("dir/data")).unwrap();
    f.write_all(&[7; 300_000]).unwrap();
    f.sync_data().unwrap();
    f.write_all(b"unsynced tail").unwrap();
    drop(f);
    sync_dir(&mnt.join("dir"));
    sync_dir(&mnt);
    // The temp-file-and-rename pattern, done right.
    fs::write(mnt.join("conf.tmp"), b"new").unwrap();
    File::open(mnt.join("conf.tmp")).unwrap().sync_all().unwrap();
    fs::rename(mnt.join("conf.tmp"), mnt.join("conf")).unwrap();
    sync_dir(&mnt);
    let report = fs.cut(Tear::None).unwrap();
    eprintln!("cut: {report}");
    fs.unmount().unwrap();

    let backing = tmp.path().join("backing");
    let fs = PowerCut::mount(&backing, &mnt).unwrap();
    assert_eq!(fs::read(mnt.join("conf")).unwrap(), b"new");
    assert_eq!(fs::read(mnt.join("dir/data")).unwrap(), vec![7; 300_000]);
    assert!(!mnt.join("conf.tmp").exists());
    // A clean unmount loses nothing: no cut.
    fs::write(mnt.join("dir/data"), b"replaced").unwrap();
    fs.unmount().unwrap();
    assert_eq!(fs::read(backing.join("dir/data")).unwrap(), b"replaced");
}
