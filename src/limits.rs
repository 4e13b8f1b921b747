//! How much one caller may ask of the server. Each limit, when passed, gets
//! a status whose message names the limit and its value.

/// The server's limits (`serve --max-…` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message, in bytes (each `IngestRecords` message on
    /// its own). Past it: `RESOURCE_EXHAUSTED`.
    pub max_request_bytes: usize,
    /// Most records in one `PutRecords` call or one `IngestRecords`
    /// message. Past it: `RESOURCE_EXHAUSTED`.
    pub max_batch_records: usize,
    /// Largest page of the list calls (`page_size`, and `limit` of
    /// `ListEvents`); a larger one asked for is lowered to it.
    pub max_page_size: usize,
    /// Most `Subscribe` streams open at once. Past it: `RESOURCE_EXHAUSTED`.
    pub max_subscribers: usize,
    /// Most watches stored. Past it, `CreateWatch` gets `RESOURCE_EXHAUSTED`.
    pub max_watches: usize,
    /// Most thresholds one watch may have (each can emit an event per
    /// write). Past it, `CreateWatch` gets `INVALID_ARGUMENT`.
    pub max_thresholds_per_watch: usize,
}

impl Limits {
    /// 4 MiB, gRPC's usual default.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
    pub const DEFAULT_MAX_BATCH_RECORDS: usize = 10_000;
    pub const DEFAULT_MAX_PAGE_SIZE: usize = 1000;
    pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1000;
    pub const DEFAULT_MAX_WATCHES: usize = 1000;
    pub const DEFAULT_MAX_THRESHOLDS_PER_WATCH: usize = 100;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            max_batch_records: Self::DEFAULT_MAX_BATCH_RECORDS,
            max_page_size: Self::DEFAULT_MAX_PAGE_SIZE,
            max_subscribers: Self::DEFAULT_MAX_SUBSCRIBERS,
            max_watches: Self::DEFAULT_MAX_WATCHES,
            max_thresholds_per_watch: Self::DEFAULT_MAX_THRESHOLDS_PER_WATCH,
        }
    }
}

impl Limits {
    /// Every limit must let something through.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_batch_records", self.max_batch_records),
            ("max_page_size", self.max_page_size),
            ("max_subscribers", self.max_subscribers),
            ("max_watches", self.max_watches),
            ("max_thresholds_per_watch", self.max_thresholds_per_watch),
        ] {
            if value == 0 {
                anyhow::bail!("limit {name} must be at least 1");
            }
        }
        Ok(())
    }
}
