//! A full disk and a read-only data dir, on real file systems mounted for
//! each test (tmpfs; ext4 in a loop-mounted image), and a write failing
//! inside sled: the real binary answers the failing write with a precise
//! status naming the data dir, keeps answering reads, and once the disk is
//! usable again has every acknowledged write (see docs/design.md, "Disk
//! trouble").
//!
//! Mounting needs root (CAP_SYS_ADMIN); without it those tests say why and
//! return without checking anything.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Binary, get_record, key_of, put, put_group, record};
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};

const PARTNERS: [&str; 20] = [
    "KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU", "FRA", "USA", "IND", "BRA", "JPN", "KOR", "VNM", "THA",
    "IDN", "TUR", "IRN", "PAK", "MNG",
];

/// Batch `b`: one record per partner, commodity `b` (as HS6), each worth
/// `b + 1` units, with a long source so that a few MiB fill up quickly.
fn batch(b: u64) -> Vec<pb::TradeRecord> {
    PARTNERS
        .iter()
        .map(|partner| {
            let mut r = record("CHN", partner, "2020", b as i64 + 1, &"s".repeat(200));
            r.commodity = format!("{b:06}");
            r
        })
        .collect()
}

/// A file system mounted on a fresh directory, unmounted when dropped (also
/// when a test fails; drop the servers using it first).
struct Mount {
    dir: PathBuf,
    /// The image of a loop-mounted file system.
    image: Option<PathBuf>,
    mounted: bool,
    _tmp: tempfile::TempDir,
}

impl Mount {
    /// A tmpfs of `size` (`4m`).
    fn tmpfs(size: &str) -> Result<Mount, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            &dir,
        )?;
        Ok(Mount {
            dir,
            image: None,
            mounted: true,
            _tmp: tmp,
        })
    }

    /// An ext4 file system of `mib` MiB in an image file, loop-mounted.
    fn ext4(mib: u64) -> Result<Mount, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let image = tmp.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib * 1024 * 1024))
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F"], &image)?;
        let mut mount = Mount {
            dir,
            image: Some(image),
            mounted: false,
            _tmp: tmp,
        };
        mount.mount(&[])?;
        Ok(mount)
    }

    /// Mounts the image again (after [`Mount::unmount`]) with `options`.
    fn mount(&mut self, options: &[&str]) -> Result<(), String> {
        let image = self.image.as_ref().expect("an image to mount");
        let options = ["loop"]
            .iter()
            .chain(options)
            .copied()
            .collect::<Vec<_>>()
            .join(",");
        run(
            "mount",
            &["-o", &options, &image.display().to_string()],
            &self.dir,
        )?;
        self.mounted = true;
        Ok(())
    }

    fn remount(&self, options: &str) -> Result<(), String> {
        run("mount", &["-o", &format!("remount,{options}")], &self.dir)
    }

    fn unmount(&mut self) -> Result<(), String> {
        run("umount", &[], &self.dir)?;
        self.mounted = false;
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazily, should a process still hold it: the directory is detached
        // at once and the file system goes when its last file is closed.
        if self.mounted && run("umount", &[], &self.dir).is_err() {
            let _ = run("umount", &["-l"], &self.dir);
        }
    }
}

/// Runs `program args… path`; the error says what failed and why.
fn run(program: &str, args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} {}: {} {}",
            args.join(" "),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The mount, or `None` after saying why the test cannot run here.
fn mounted(mount: Result<Mount, String>) -> Option<Mount> {
    match mount {
        Ok(m) => Some(m),
        Err(why) => {
            eprintln!(
                "skipped: cannot mount a file system for this test (needs root or CAP_SYS_ADMIN): {why}"
            );
            None
        }
    }
}

/// Starts the binary on `dir` with `extra` flags; when it exits instead of listening, its exit
/// status and what it wrote on stderr.
fn try_start(dir: &Path, extra: &[&str]) -> Result<Binary, (ExitStatus, String)> {
    spawn(Command::new(env!("CARGO_BIN_EXE_tradewatch")), dir, extra)
}

/// Starts the binary like [`try_start`], through `command` (the binary, or
/// a shell that ends by running it).
fn spawn(mut command: Command, dir: &Path, extra: &[&str]) -> Result<Binary, (ExitStatus, String)> {
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server starts");
    // Copied through (and kept), so that a server logging a lot never
    // blocks on a full pipe.
    let stderr = Arc::new(Mutex::new(String::new()));
    let copier = {
        let (mut pipe, stderr) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("{text}");
                stderr.lock().unwrap().push_str(&text);
            }
        })
    };
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("reads stdout");
    match line.trim().strip_prefix("tradewatch listening on ") {
        Some(addr) => Ok(Binary {
            child,
            addr: addr.to_owned(),
        }),
        None => {
            let status = child.wait().unwrap();
            copier.join().unwrap();
            let stderr = stderr.lock().unwrap().clone();
            Err((status, stderr))
        }
    }
}

fn start(dir: &Path, extra: &[&str]) -> Binary {
    try_start(dir, extra)
        .unwrap_or_else(|(status, stderr)| panic!("server did not start ({status}): {stderr}"))
}

/// SIGTERM, and the exit status once the server has shut down.
fn terminate(mut server: Binary) -> ExitStatus {
    run("kill", &["-TERM"], Path::new(&server.child.id().to_string())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server still running 20 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the store keeps free on the data dir's disk (see
/// `src/store/disk.rs`).
const KEEP_FREE_MIB: u64 = 16;

/// Writes batches `from..` until one fails; returns the failure, after
/// adding the acknowledged batches to `acknowledged`.
async fn fill(
    client: &mut TradeServiceClient<Channel>,
    from: u64,
    acknowledged: &mut Vec<u64>,
) -> tonic::Status {
    for b in from..from + 100_000 {
        match client.put_records(put(batch(b))).await {
            Ok(_) => acknowledged.push(b),
            Err(status) => return status,
        }
    }
    panic!("100,000 batches and the disk is not full");
}

/// Every record of `reporter`, in key order.
async fn list(
    client: &mut TradeServiceClient<Channel>,
    reporter: &str,
) -> Result<Vec<pb::TradeRecord>, tonic::Status> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_records(pb::ListRecordsRequest {
                selector: Some(pb::RecordSelector {
                    reporters: vec![reporter.into()],
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every batch stored, by number.
async fn stored_batches(client: &mut TradeServiceClient<Channel>) -> BTreeMap<u64, Vec<pb::TradeRecord>> {
    let mut out: BTreeMap<u64, Vec<pb::TradeRecord>> = BTreeMap::new();
    for r in list(client, "CHN").await.expect("ListRecords answers") {
        out.entry(r.commodity.parse().unwrap()).or_default().push(r);
    }
    out
}

/// Every acknowledged batch is stored in full, and no batch in part.
async fn check_stored(client: &mut TradeServiceClient<Channel>, acknowledged: &[u64]) {
    let stored = stored_batches(client).await;
    for b in acknowledged {
        assert!(stored.contains_key(b), "acknowledged batch {b} is missing");
    }
    for (b, records) in &stored {
        assert_eq!(records.len(), PARTNERS.len(), "batch {b} is torn");
        for r in records {
            assert_eq!(r.value.as_ref().unwrap().units, *b as i64 + 1, "batch {b}: {r:?}");
        }
    }
}

/// GetRecord, ListRecords and Aggregate for batch `b`: each answer, or the
/// status of the first that failed.
async fn read_batch(client: &mut TradeServiceClient<Channel>, b: u64) -> Result<(), tonic::Status> {
    let r = &batch(b)[0];
    let got = get_record(client, key_of(r)).await?;
    assert_eq!(got.value.unwrap().units, b as i64 + 1);
    let listed = list(client, "CHN").await?;
    assert_eq!(
        listed.iter().filter(|l| l.commodity == r.commodity).count(),
        PARTNERS.len()
    );
    let total = client
        .aggregate(pb::AggregateRequest {
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                commodities: vec![r.commodity.clone()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        total.rows[0].total.as_ref().unwrap().units,
        (b as i64 + 1) * PARTNERS.len() as i64
    );
    Ok(())
}

/// The status is `code`, and the message contains each of `says` and names
/// the data dir.
fn assert_refused(status: &tonic::Status, code: Code, says: &[&str], dir: &Path) {
    assert_eq!(status.code(), code, "{status:?}");
    let message = status.message();
    for s in says {
        assert!(message.contains(s), "{message:?} does not say {s:?}");
    }
    assert!(
        message.contains(&dir.display().to_string()),
        "{message:?} does not name the data dir {}",
        dir.display()
    );
}

/// Every kind of write is refused with `code` and a message saying `says`.
async fn assert_writes_refused(
    client: &mut TradeServiceClient<Channel>,
    code: Code,
    says: &[&str],
    dir: &Path,
) {
    let new = client.put_records(put(batch(999_999))).await.unwrap_err();
    assert_refused(&new, code, says, dir);
    // One that would change nothing, too.
    let unchanged = client.put_records(put(batch(0))).await.unwrap_err();
    assert_refused(&unchanged, code, says, dir);
    let group = client
        .put_group(put_group(pb::PartnerGroup {
            name: "NEIGHBOURS".into(),
            members: vec!["KAZ".into(), "MNG".into()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_refused(&group, code, says, dir);
}

/// Reads of batches 0 and 4 answer, or, where sled would have to write to
/// answer (to finish a node split) and has stopped, fail with `code` and a
/// message saying `says`: never INTERNAL.
async fn reads_answer_or_say(client: &mut TradeServiceClient<Channel>, code: Code, says: &str) {
    for b in [0, 4] {
        if let Err(status) = read_batch(client, b).await {
            eprintln!("a read after sled stopped: {status:?}");
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(says), "{status:?}");
        }
    }
}

/// Writes `path` until its disk has only `leave` bytes free (about).
fn fill_up(path: &Path, leave: u64) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4 << 10, 1] {
        let zeros = vec![0u8; chunk];
        loop {
            match file.write(&zeros) {
                Ok(n) if n == chunk => {}
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(leave)).unwrap();
}

/// The disk fills up little by little: the store refuses writes while less
/// than it keeps free is left, before sled runs out, so reads keep working
/// and writes resume as soon as there is space again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_and_resumes_when_space_returns() {
    let Some(mount) = mounted(Mount::tmpfs(&format!("{}m", KEEP_FREE_MIB + 8))) else {
        return;
    };
    let data = mount.data_dir();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    let mut acknowledged = Vec::new();
    let failed = fill(&mut client, 0, &mut acknowledged).await;
    eprintln!("{} batches acknowledged; then {failed:?}", acknowledged.len());
    assert!(acknowledged.len() > 10, "the disk filled up at once");
    let says = [
        "full",
        "MiB free",
        "nothing was stored",
        "writes resume once space is freed",
    ];
    assert_refused(&failed, Code::ResourceExhausted, &says, &data);

    // Another program takes more: now every write is refused, even one
    // that would change nothing. (It leaves a little: on a disk with no
    // space at all sled may fail on its own, flushing and cleaning its log
    // in the background, and the store then stops until restarted; with
    // 4 MiB left that happened once in many runs.)
    let filler = mount.dir.join("filler");
    fill_up(&filler, 6 << 20);
    let says = [
        "is full (",
        "MiB free; tradewatch keeps 16 MiB free",
        "nothing was stored",
        "writes resume once space is freed",
    ];
    assert_writes_refused(&mut client, Code::ResourceExhausted, &says, &data).await;
    // It says what is left: about the 6 MiB the filler left (sled's log
    // goes on flushing and cleaning in the background).
    let refused = client.put_records(put(batch(999_999))).await.unwrap_err();
    let free: f64 = refused
        .message()
        .split("is full (")
        .nth(1)
        .and_then(|rest| rest.split(" MiB free").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{:?} does not say how much is free", refused.message()));
    assert!((4.0..=8.0).contains(&free), "{:?}", refused.message());

    read_batch(&mut client, 0).await.expect("reads answer");
    read_batch(&mut client, *acknowledged.last().unwrap())
        .await
        .expect("reads answer");
    check_stored(&mut client, &acknowledged).await;

    std::fs::remove_file(&filler).unwrap();
    mount.remount(&format!("size={}m", KEEP_FREE_MIB + 64)).unwrap();
    let next = acknowledged.last().unwrap() + 1;
    client
        .put_records(put(batch(next)))
        .await
        .expect("a write once space is back");
    acknowledged.push(next);

    server.kill();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    check_stored(&mut client, &acknowledged).await;
    client
        .put_records(put(batch(next + 1)))
        .await
        .expect("a write after the restart");
}

/// `count` records of reporter GBR in one batch, worth `units` each.
fn huge_batch(count: usize, units: i64) -> Vec<pb::TradeRecord> {
    (0..count)
        .map(|i| {
            let mut r = record(
                "GBR",
                PARTNERS[i % PARTNERS.len()],
                "2020",
                units,
                &"h".repeat(200),
            );
            r.commodity = format!("{:06}", i / PARTNERS.len());
            r
        })
        .collect()
}

/// A write larger than the space left is refused whole before sled
/// starts on it (sled running out in the middle of a batch would leave
/// part of it to be recovered); smaller writes still succeed, and the big
/// one does once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_too_large_for_the_space_left_is_refused_whole() {
    let Some(mount) = mounted(Mount::tmpfs(&format!("{}m", KEEP_FREE_MIB + 4))) else {
        return;
    };
    let data = mount.data_dir();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    const BIG: usize = 5_000;
    let failed = client.put_records(put(huge_batch(BIG, 1))).await.unwrap_err();
    eprintln!("the big write: {failed:?}");
    let says = [
        "too full for this write",
        "nothing was stored",
        "writes resume once space is freed",
    ];
    assert_refused(&failed, Code::ResourceExhausted, &says, &data);
    assert!(list(&mut client, "GBR").await.unwrap().is_empty());

    client.put_records(put(batch(0))).await.expect("a small write");
    read_batch(&mut client, 0).await.expect("reads answer");

    mount.remount(&format!("size={}m", KEEP_FREE_MIB + 64)).unwrap();
    client
        .put_records(put(huge_batch(BIG, 1)))
        .await
        .expect("the big write once there is room");
    assert_eq!(list(&mut client, "GBR").await.unwrap().len(), BIG);
}

/// A write that fails inside sled (here: the server may not grow a file
/// past a limit, RLIMIT_FSIZE, so sled's log write fails with EFBIG): sled
/// stops its log, so the store refuses every later write until restarted,
/// and a read that would have to write fails with UNAVAILABLE, never
/// INTERNAL. SIGTERM still stops the server, and after a restart every
/// acknowledged write is there. Needs no mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_inside_sled_stops_writes_until_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut acknowledged: Vec<u64> = (0..5).collect();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    for &b in &acknowledged {
        client.put_records(put(batch(b))).await.unwrap();
    }
    server.kill();

    // Room for 2 MiB more (in 512-byte blocks; a shell counting 1 KiB
    // blocks only allows more), SIGXFSZ ignored so that the write fails
    // instead of killing the process.
    let db_size = std::fs::metadata(data.join("db")).unwrap().len();
    let blocks = (db_size + (2 << 20)) / 512;
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        "trap '' XFSZ; ulimit -f \"$1\" || exit 125; shift; exec \"$@\"",
        "sh",
        &blocks.to_string(),
        env!("CARGO_BIN_EXE_tradewatch"),
    ]);
    let server = spawn(shell, &data, &[]).unwrap_or_else(|(status, stderr)| panic!("{status}: {stderr}"));
    let mut client = server.client().await;
    let failed = fill(&mut client, 5, &mut acknowledged).await;
    let failing = acknowledged.last().unwrap() + 1;
    eprintln!(
        "{} batches acknowledged; batch {failing}: {failed:?}",
        acknowledged.len()
    );
    let says = [
        "cannot write to data dir",
        "may not have been stored",
        "restarted",
    ];
    assert_refused(&failed, Code::Unavailable, &says, &data);
    assert_writes_refused(&mut client, Code::Unavailable, &says, &data).await;
    reads_answer_or_say(&mut client, Code::Unavailable, "storage").await;

    let status = terminate(server);
    assert!(status.success(), "shutdown after sled stopped: {status}");
    let server = start(&data, &[]);
    let mut client = server.client().await;
    let stored = stored_batches(&mut client).await;
    for b in &acknowledged {
        let found = stored.get(b).map_or(0, Vec::len);
        assert_eq!(
            found,
            PARTNERS.len(),
            "acknowledged batch {b} has {found} records"
        );
    }
    // sled recovers what it wrote of a batch it failed in the middle of
    // (see docs/design.md): reported, not checked.
    eprintln!(
        "the failed batch {failing} after the restart: {} of {} records",
        stored.get(&failing).map_or(0, Vec::len),
        PARTNERS.len()
    );
    client
        .put_records(put(batch(failing + 1)))
        .await
        .expect("a write after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_data_dir_refuses_to_start_clearly() {
    let Some(mount) = mounted(Mount::tmpfs(&format!("{}m", KEEP_FREE_MIB + 16))) else {
        return;
    };
    let data = mount.data_dir();
    let acknowledged: Vec<u64> = (0..5).collect();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    for &b in &acknowledged {
        client.put_records(put(batch(b))).await.unwrap();
    }
    server.kill();

    // Linux refuses to make a file system read-only while a process has a
    // file of it open for writing (EBUSY), as the server has: see the next
    // test for one that turns read-only under the server.
    mount.remount("ro").unwrap();
    let (status, stderr) = match try_start(&data, &[]) {
        Ok(_) => panic!("the server started on a read-only data dir"),
        Err(failed) => failed,
    };
    eprintln!("start on a read-only data dir: {status}: {stderr}");
    assert_eq!(status.code(), Some(1), "an error exit, not a crash: {status}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("read-only"), "{stderr}");
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");

    mount.remount("rw").unwrap();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    check_stored(&mut client, &acknowledged).await;
    client
        .put_records(put(batch(5)))
        .await
        .expect("a write once writable");
}

/// A file system that turns read-only under the server, as ext4 does on an
/// I/O error with `errors=remount-ro`: `mount -o remount,abort` stops its
/// journal, and every later change to it fails with EROFS. Writes are
/// refused before sled tries one, reads keep working, and acknowledged
/// writes were synced before they were acknowledged, so the file system
/// mounted afresh has them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_turning_read_only_under_the_server_refuses_writes_clearly() {
    let Some(mut mount) = mounted(Mount::ext4(64)) else {
        return;
    };
    let data = mount.data_dir();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    let acknowledged: Vec<u64> = (0..5).collect();
    for &b in &acknowledged {
        client.put_records(put(batch(b))).await.unwrap();
    }
    // Batches large enough that sled keeps their event blocks in files of
    // their own ("blobs"), the second revising the first.
    client.put_records(put(huge_batch(600, 1))).await.unwrap();
    client.put_records(put(huge_batch(600, 2))).await.unwrap();

    mount.remount("abort").unwrap();
    let failed = client.put_records(put(batch(5))).await.unwrap_err();
    eprintln!("a write to a read-only data dir: {failed:?}");
    let says = ["is on a read-only file system", "nothing was stored"];
    assert_refused(&failed, Code::FailedPrecondition, &says, &data);
    assert_writes_refused(&mut client, Code::FailedPrecondition, &says, &data).await;
    reads_answer_or_say(&mut client, Code::FailedPrecondition, "disk is read-only").await;

    // An aborted ext4 is writable again once mounted afresh.
    server.kill();
    mount.unmount().unwrap();
    mount.mount(&[]).unwrap();
    let server = start(&data, &[]);
    let mut client = server.client().await;
    check_stored(&mut client, &acknowledged).await;
    let big = list(&mut client, "GBR").await.unwrap();
    assert_eq!(big.len(), 600);
    assert!(
        big.iter()
            .all(|r| r.value.as_ref().unwrap().units == 2 && r.revision == 2)
    );
    client
        .put_records(put(batch(5)))
        .await
        .expect("a write once writable");
}
