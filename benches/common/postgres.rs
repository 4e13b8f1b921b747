//! The PostgreSQL table the benches compare with.
#![allow(dead_code)]

/// Creates `table` afresh with the columns of a trade record and its
/// natural key as primary key (the index a DBA would add for the
/// benchmark questions comes with [`INDEX`]).
pub fn create_table(table: &str) -> String {
    format!(
        "DROP TABLE IF EXISTS {table};
         CREATE TABLE {table} (
           reporter char(3) NOT NULL, partner char(3) NOT NULL, flow text NOT NULL,
           period smallint NOT NULL, month smallint NOT NULL DEFAULT 0, monthly boolean NOT NULL DEFAULT false,
           commodity varchar(6) NOT NULL, currency char(3) NOT NULL, value numeric(38, 9) NOT NULL,
           source text, released_at timestamptz,
           PRIMARY KEY (reporter, partner, commodity, monthly, period, month, flow, currency))"
    )
}

/// The index a DBA would add for the questions: a commodity of a reporter
/// over all its partners is a range read.
pub fn index(table: &str) -> String {
    format!("CREATE INDEX ON {table} (commodity, currency, reporter, partner, period)")
}

/// p50 and p99 of executing `sql` by pgbench (prepared statements, one
/// client over TCP, `conninfo` as libpq takes it) for `seconds`, from its
/// log of every transaction, the first sixth left out as warm-up.
pub fn pgbench(
    conninfo: &str,
    sql: &str,
    seconds: u32,
) -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
    let pgbench = ["/usr/lib/postgresql/15/bin/pgbench", "pgbench"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("--version").output().is_ok())
        .ok_or_else(|| anyhow::anyhow!("pgbench not found (it comes with PostgreSQL)"))?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("question.sql");
    std::fs::write(&script, format!("{sql};\n"))?;
    let out = std::process::Command::new(pgbench)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            "1",
            "-j",
            "1",
            "-T",
            &seconds.to_string(),
            "-l",
        ])
        .arg(format!("--log-prefix={}", dir.path().join("log").display()))
        .arg("-f")
        .arg(&script)
        .arg(conninfo)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // One file per client: client, transaction, microseconds, …
    let mut micros = Vec::new();
    for entry in std::fs::read_dir(dir.path())? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            let log = std::fs::read_to_string(path)?;
            micros.extend(
                log.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
            );
        }
    }
    anyhow::ensure!(
        micros.len() >= 6,
        "pgbench logged only {} transactions",
        micros.len()
    );
    let mut measured = micros.split_off(micros.len() / 6);
    measured.sort_unstable();
    let at = |q: f64| {
        std::time::Duration::from_micros(measured[((measured.len() as f64 - 1.0) * q).round() as usize])
    };
    Ok((at(0.5), at(0.99)))
}
