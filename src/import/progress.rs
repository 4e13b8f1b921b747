//! Progress of a long import on the terminal: rows and rows per second on
//! stderr, redrawn in place. Nothing is drawn when stderr is not a terminal
//! (a pipe, a log file, a test), so output stays clean there.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Files smaller than this load too fast for a progress bar to help.
const MIN_ROWS: u64 = 10_000;
const MIN_BYTES: u64 = 1 << 20;

fn bar(len: u64, min: u64, template: &str, message: &'static str) -> ProgressBar {
    if len < min {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template)
        .expect("a valid template")
        .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(message)
}

/// Reading and checking a file of `len` bytes.
pub fn checking(len: u64) -> ProgressBar {
    bar(
        len,
        MIN_BYTES,
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        "checking rows",
    )
}

/// Storing (or sending) `rows` rows.
pub fn rows(rows: u64, message: &'static str) -> ProgressBar {
    bar(
        rows,
        MIN_ROWS,
        "{msg} [{bar:30}] {human_pos}/{human_len} rows ({per_sec}, {eta} left)",
        message,
    )
}
