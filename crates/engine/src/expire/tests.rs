//! Unit tests of `expire`.

use super::*;
use lifeboat_repo::backup::testing::ManifestBuilder;

/// A manifest with only what ordering and retention look at; other fields take defaults.
fn manifest(label: &str, stop_lsn: u64, stop_time: &str) -> Manifest {
    ManifestBuilder::new(label)
        .lsns(stop_lsn - 1, stop_lsn)
        .time(stop_time)
        .build()
}

fn kept(fates: &[Option<String>]) -> Vec<bool> {
    fates.iter().map(Option::is_some).collect()
}

#[test]
fn keep_last_keeps_the_newest_by_position_never_by_label() {
    let now = OffsetDateTime::now_utc();
    // Labels in reverse order of age: the order that counts is the stop LSN.
    let ms = vec![
        manifest("z", 10, "2026-01-01T00:00:00Z"),
        manifest("y", 20, "2026-01-02T00:00:00Z"),
        manifest("x", 30, "2026-01-03T00:00:00Z"),
    ];
    assert_eq!(kept(&choose(&ms, Some(2), None, now)), [false, true, true]);
    assert_eq!(kept(&choose(&ms, Some(1), None, now)), [false, false, true]);
    assert_eq!(kept(&choose(&ms, Some(9), None, now)), [true, true, true]);
    assert!(choose(&[], Some(1), None, now).is_empty());
}

#[test]
fn keep_days_keeps_the_window_and_the_backup_that_opens_it() {
    let now = lifeboat_repo::timestamp::parse("2026-01-10T12:00:00Z").unwrap();
    let ms = vec![
        manifest("a", 10, "2026-01-01T00:00:00Z"),
        manifest("b", 20, "2026-01-02T00:00:00Z"),
        manifest("c", 30, "2026-01-08T00:00:00Z"),
        manifest("d", 40, "2026-01-09T00:00:00Z"),
        manifest("e", 50, "2026-01-10T00:00:00Z"),
    ];
    // 7 days back is 2026-01-03T12:00: c, d, e ended after it; b restores to it.
    let fates = choose(&ms, None, Some(7), now);
    assert_eq!(kept(&fates), [false, true, true, true, true]);
    assert!(fates[1].as_deref().unwrap().contains("boundary"));
    // Union with keep_last.
    assert_eq!(
        kept(&choose(&ms, Some(4), Some(1), now)),
        [false, true, true, true, true]
    );
    // Everything older than the window except the newest: only the newest stays.
    let old = vec![
        manifest("a", 10, "2025-01-01T00:00:00Z"),
        manifest("b", 20, "2025-01-02T00:00:00Z"),
    ];
    assert_eq!(kept(&choose(&old, None, Some(7), now)), [false, true]);
}

#[test]
fn no_policy_is_refused() {
    assert!(check_policy(&ExpireOptions::default()).is_err());
    assert!(
        check_policy(&ExpireOptions {
            keep_last: Some(0),
            ..Default::default()
        })
        .is_err()
    );
    let p = check_policy(&ExpireOptions {
        keep_last: Some(2),
        keep_days: Some(7),
        dry_run: false,
        dumps: None,
    })
    .unwrap();
    assert!(p.rule.contains("either"), "{}", p.rule);
}

#[test]
fn dump_retention_keeps_the_newest_and_what_the_rules_say() {
    use lifeboat_repo::dump::{Chunking, DumpManifest, DumpStream};
    let now = OffsetDateTime::now_utc();
    let stream = || DumpStream {
        name: String::new(),
        format: "sql".into(),
        program_version: String::new(),
        server_major: 15,
        start_time: now,
        stop_time: now,
        size: 0,
        stored_size: 0,
        chunks: Vec::new(),
    };
    let dump = |label: &str, days_ago: i64| DumpManifest {
        format: lifeboat_repo::dump::DUMP_FORMAT.into(),
        version: 1,
        label: label.into(),
        server_version_num: 150000,
        start_time: now - time::Duration::days(days_ago),
        stop_time: now - time::Duration::days(days_ago),
        duration_seconds: 0.0,
        chunking: Chunking {
            algorithm: "fastcdc-v2020".into(),
            min_size: 1,
            avg_size: 2,
            max_size: 3,
        },
        globals: stream(),
        databases: Vec::new(),
        size: 0,
        stored_size: 0,
    };
    let ds = vec![dump("a", 10), dump("b", 5), dump("c", 1)];
    let r = |keep_last, keep_days| DumpRetention {
        keep_last,
        keep_days,
    };
    assert_eq!(
        kept(&dumps::choose(&ds, r(Some(1), None), now)),
        [false, false, true]
    );
    assert_eq!(
        kept(&dumps::choose(&ds, r(None, Some(7)), now)),
        [false, true, true]
    );
    assert_eq!(
        kept(&dumps::choose(&ds, r(None, Some(30)), now)),
        [true, true, true]
    );
    assert!(r(None, None).check().is_err());
    assert!(r(Some(0), None).check().is_err());
    assert!(
        check_policy(&ExpireOptions {
            dumps: Some(r(Some(1), None)),
            ..Default::default()
        })
        .is_ok()
    );
}
