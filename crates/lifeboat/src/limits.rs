//! The accepted range of every numeric flag and config key, in one place.
//!
//! A value outside its range is a configuration error (exit 3) that names the flag or key and
//! the range, whether it came from the command line or the config file: never a panic, an
//! overflow or an allocation sized by the input further down. Flags are checked by their clap
//! value parser ([`Limit::parse`]); config keys when the file is read ([`Limit::check`]).

use std::fmt;

/// An inclusive range with the unit it counts, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub min: i64,
    pub max: i64,
    pub unit: &'static str,
}

impl Limit {
    const fn new(min: i64, max: i64, unit: &'static str) -> Self {
        Self { min, max, unit }
    }

    /// `value` converted to `T` when it lies in the range; otherwise the message for `name`.
    pub fn check<T: TryFrom<i128>>(&self, name: &str, value: i128) -> Result<T, String> {
        if (i128::from(self.min)..=i128::from(self.max)).contains(&value)
            && let Ok(v) = T::try_from(value)
        {
            return Ok(v);
        }
        Err(format!("{name} = {value} is out of range: {self}"))
    }

    /// Parse a flag's value: a decimal integer, any size (a number too large for the type is
    /// out of range, not a typo).
    pub fn parse<T: TryFrom<i128>>(&self, text: &str) -> Result<T, ValueError> {
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::NotANumber(format!(
                "{text:?} is not a whole number ({self})"
            )));
        }
        let value = trimmed
            .parse::<i128>()
            .unwrap_or(if trimmed.starts_with('-') {
                i128::MIN
            } else {
                i128::MAX
            });
        if (i128::from(self.min)..=i128::from(self.max)).contains(&value)
            && let Ok(v) = T::try_from(value)
        {
            return Ok(v);
        }
        Err(ValueError::OutOfRange(format!("out of range: {self}")))
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accepted {} to {}", self.min, self.max)?;
        if !self.unit.is_empty() {
            write!(f, " {}", self.unit)?;
        }
        Ok(())
    }
}

/// Why a numeric flag was refused. `OutOfRange` is a configuration error (exit 3); `NotANumber`
/// stays a usage error (exit 2), like any other malformed argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    OutOfRange(String),
    NotANumber(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange(m) | Self::NotANumber(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ValueError {}

/// Threads or concurrent transfers: backup, restore, wal-push, the prefetcher.
pub const PARALLEL: Limit = Limit::new(1, 1024, "");
/// Segments fetched ahead during recovery (each up to 16 MiB in the spool); 0 turns it off.
pub const PREFETCH: Limit = Limit::new(0, 256, "segments");
pub const KEEP_LAST: Limit = Limit::new(1, 1_000_000, "backups");
pub const KEEP_DAYS: Limit = Limit::new(1, 100_000, "days");
/// `check --timeout`, `backup.archive_timeout_seconds`.
pub const WAIT_SECONDS: Limit = Limit::new(1, 86_400, "seconds");
/// `storage.timeout_seconds`: one attempt of one storage call.
pub const STORAGE_TIMEOUT_SECONDS: Limit = Limit::new(1, 3_600, "seconds");
pub const STORAGE_MAX_ATTEMPTS: Limit = Limit::new(1, 100, "");
/// `--concurrency`, `storage.concurrency`: storage requests in flight at once (each may hold one
/// stored object, up to a block or a WAL segment, in memory).
pub const CONCURRENCY: Limit = Limit::new(1, 1024, "requests");
/// `backup.block_size_kib` (also a power of two).
pub const BLOCK_SIZE_KIB: Limit = Limit::new(64, 16_384, "KiB, a power of two");
/// zstd's own range (negative levels are its fast modes).
pub const ZSTD_LEVEL: Limit = Limit::new(-131_072, 22, "");
pub const DEMO_SECONDS: Limit = Limit::new(1, 3_600, "seconds");
/// `drill.timeout`, in seconds.
pub const DRILL_TIMEOUT_SECONDS: Limit = Limit::new(1, 7 * 86_400, "seconds (7 days)");

/// clap value parsers, one per kind of flag.
pub mod flag {
    use super::{Limit, ValueError};

    fn parse<T: TryFrom<i128>>(limit: Limit, text: &str) -> Result<T, ValueError> {
        limit.parse(text)
    }

    pub fn parallel(text: &str) -> Result<usize, ValueError> {
        parse(super::PARALLEL, text)
    }
    pub fn concurrency(text: &str) -> Result<usize, ValueError> {
        parse(super::CONCURRENCY, text)
    }
    pub fn prefetch(text: &str) -> Result<usize, ValueError> {
        parse(super::PREFETCH, text)
    }
    pub fn keep_last(text: &str) -> Result<u32, ValueError> {
        parse(super::KEEP_LAST, text)
    }
    pub fn keep_days(text: &str) -> Result<u32, ValueError> {
        parse(super::KEEP_DAYS, text)
    }
    pub fn wait_seconds(text: &str) -> Result<u64, ValueError> {
        parse(super::WAIT_SECONDS, text)
    }
    pub fn zstd_level(text: &str) -> Result<i32, ValueError> {
        parse(super::ZSTD_LEVEL, text)
    }
    pub fn demo_seconds(text: &str) -> Result<u64, ValueError> {
        parse(super::DEMO_SECONDS, text)
    }
}

/// serde `deserialize_with` functions for config keys: an integer of any size is read, then
/// checked, so that the message names the key and the range (not "expected u32").
pub mod key {
    use serde::{Deserialize, Deserializer};

    use super::Limit;

    fn read<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        d: D,
        name: &str,
        limit: Limit,
    ) -> Result<Option<T>, D::Error> {
        let value = Option::<i64>::deserialize(d)?;
        value
            .map(|v| limit.check(name, i128::from(v)))
            .transpose()
            .map_err(serde::de::Error::custom)
    }

    macro_rules! keys {
        ($($fn_name:ident: $t:ty = $name:literal, $limit:ident;)*) => {$(
            pub fn $fn_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$t>, D::Error> {
                read(d, $name, super::$limit)
            }
        )*};
    }

    keys! {
        push_parallel: usize = "archive.push_parallel", PARALLEL;
        prefetch: usize = "archive.prefetch", PREFETCH;
        prefetch_parallel: usize = "archive.prefetch_parallel", PARALLEL;
        backup_parallel: usize = "backup.parallel", PARALLEL;
        block_size_kib: u32 = "backup.block_size_kib", BLOCK_SIZE_KIB;
        archive_timeout_seconds: u64 = "backup.archive_timeout_seconds", WAIT_SECONDS;
        restore_parallel: usize = "restore.parallel", PARALLEL;
        keep_last: u32 = "retention.keep_last", KEEP_LAST;
        keep_days: u32 = "retention.keep_days", KEEP_DAYS;
        storage_timeout_seconds: u64 = "storage.timeout_seconds", STORAGE_TIMEOUT_SECONDS;
        storage_max_attempts: u32 = "storage.max_attempts", STORAGE_MAX_ATTEMPTS;
        storage_concurrency: usize = "storage.concurrency", CONCURRENCY;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_in_range_parse_and_the_rest_is_out_of_range_or_not_a_number() {
        assert_eq!(flag::parallel("1").unwrap(), 1);
        assert_eq!(flag::parallel("1024").unwrap(), 1024);
        assert_eq!(flag::prefetch("0").unwrap(), 0);
        assert_eq!(flag::zstd_level("-5").unwrap(), -5);
        for bad in [
            "0",
            "1025",
            "9223372036854775808",
            "99999999999999999999999999999999999999999999",
            "-1",
        ] {
            assert!(
                matches!(flag::parallel(bad), Err(ValueError::OutOfRange(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            flag::keep_days("50000000"),
            Err(ValueError::OutOfRange(m)) if m.contains("1 to 100000 days")
        ));
        for bad in ["", "abc", "1.5", "0x10", "--"] {
            assert!(
                matches!(flag::parallel(bad), Err(ValueError::NotANumber(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_name_themselves_and_the_range() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "key::keep_days")]
            keep_days: Option<u32>,
        }
        assert_eq!(
            toml::from_str::<T>("keep_days = 30").unwrap().keep_days,
            Some(30)
        );
        assert_eq!(toml::from_str::<T>("").unwrap().keep_days, None);
        for bad in ["keep_days = 50000000", "keep_days = 0", "keep_days = -1"] {
            let e = toml::from_str::<T>(bad).unwrap_err();
            assert!(
                e.message().contains("retention.keep_days")
                    && e.message().contains("1 to 100000 days"),
                "{bad}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn concurrency_flag_is_checked() {
        assert_eq!(flag::concurrency("1").unwrap(), 1);
        assert_eq!(flag::concurrency("1024").unwrap(), 1024);
        assert!(matches!(
            flag::concurrency("0"),
            Err(ValueError::OutOfRange(m)) if m.contains("1 to 1024 requests")
        ));
    }
}
