//! Latency of one gRPC call measured by h2load (nghttp2's HTTP/2 load
//! client, written in C): one call at a time on one connection, so that the
//! client adds little of its own to what is measured — the neutral client
//! that a comparison with pgbench asks for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Percentiles of sequential calls.
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

/// The h2load binary: on PATH, or installed from Debian's `nghttp2-client`
/// when this runs as root; otherwise why not.
pub fn find() -> Result<PathBuf, String> {
    let on_path = || {
        let out = Command::new("sh")
            .args(["-c", "command -v h2load"])
            .output()
            .ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !path.trim().is_empty()).then(|| PathBuf::from(path.trim()))
    };
    if let Some(path) = on_path() {
        return Ok(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
    if !root {
        return Err("h2load is not on PATH and installing nghttp2-client needs root".into());
    }
    eprintln!("h2load not on PATH: installing Debian's nghttp2-client");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "nghttp2-client"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    match on_path() {
        Some(path) if installed => Ok(path),
        _ => Err("apt-get install nghttp2-client failed".into()),
    }
}

/// `runs` calls of `method` (`/package.Service/Method`) with the encoded
/// message `request`,
/// one after the other on one connection to `addr`, after as many again to
/// warm up. Fails unless every call got a response carrying a message (an
/// error answers with trailers only).
pub fn unary(
    h2load: &Path,
    addr: &str,
    method: &str,
    request: &[u8],
    runs: usize,
) -> anyhow::Result<Latency> {
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("request");
    let log = dir.path().join("log");
    let message = request;
    // gRPC's framing: not compressed, then the length, big-endian.
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    framed.extend_from_slice(message);
    std::fs::write(&body, framed)?;
    let total = 2 * runs;
    let out = Command::new(h2load)
        .args(["-n", &total.to_string(), "-c", "1", "-m", "1", "-t", "1"])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--log-file")
        .arg(&log)
        .arg(format!("http://{addr}{method}"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "h2load failed: {stdout}");
    let succeeded = stdout
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|part| part.strip_suffix(" succeeded")))
        .and_then(|n| n.parse::<usize>().ok());
    anyhow::ensure!(
        succeeded == Some(total),
        "h2load: not every call succeeded: {stdout}"
    );
    // "traffic: … total, … headers (…), N (N) data": the messages' bytes.
    let data = stdout
        .lines()
        .find_map(|l| l.strip_prefix("traffic: "))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|d| d.split_whitespace().next())
        .and_then(parse_size);
    anyhow::ensure!(
        data.is_some_and(|d| d >= 5.0 * total as f64),
        "h2load: the responses carry no messages (calls failed?): {stdout}"
    );
    // start time, status, microseconds to the end of the response
    let mut micros: Vec<u64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    anyhow::ensure!(
        micros.len() == total,
        "h2load logged {} of {total} calls",
        micros.len()
    );
    let mut measured = micros.split_off(runs);
    measured.sort_unstable();
    let at = |q: f64| Duration::from_micros(measured[((measured.len() as f64 - 1.0) * q).round() as usize]);
    Ok(Latency {
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// h2load's byte counts: "1234", "1.21KB", "3.5MB".
fn parse_size(s: &str) -> Option<f64> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let scale = match unit {
        "" | "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}
