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
