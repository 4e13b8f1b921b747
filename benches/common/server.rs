//! The release binary serving a store in a process of its own, as users run
//! it; killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_tradewatch");

/// The binary to measure: this build's, or another one's given in
/// `TRADEWATCH_BENCH_BIN` (to compare two builds on the same data).
pub fn bin() -> String {
    std::env::var("TRADEWATCH_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned())
}

pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// `tradewatch serve` on `data_dir` (plus `extra` arguments) on a free
    /// loopback port; returns once it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Server::start_bin(&bin(), data_dir, extra)
    }

    /// [`Server::start`] of the binary at `bin`.
    pub fn start_bin(bin: &str, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("tradewatch listening on ")
            .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?
            .to_owned();
        Ok(Server { child, addr })
    }

    /// The server's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// CPU time the server has used so far (user + system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Asks the server to stop (SIGTERM, as `kill` does) and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg(self.child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill failed");
        let exit = self.child.wait()?;
        anyhow::ensure!(exit.success(), "server exited with {exit}");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// User + system CPU time of a process from its `/proc/…/stat`.
pub fn cpu_seconds_of(stat_path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
