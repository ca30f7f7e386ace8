//! Expire: what a retention policy keeps and deletes (backups, WAL, chunks), planned from the
//! repository's content, and a real run deleting exactly what the dry run reported.

use std::collections::BTreeSet;

use lifeboat_repo::keys;

use super::*;
use crate::expire::{ExpireOptions, ExpireReport, expire};

/// Three backups (a: segments 2-3, b: 5-6, c: 8-9) sharing chunks, WAL 1..=10 and a few other
/// files, and a chunk no backup references.
async fn repository() -> Repository {
    let repo = repo().await;
    for m in three_backups() {
        backup(&repo, &m).await;
    }
    put_chunk(&repo, chunk(9)).await;
    archive(&repo, 1, 1..=10).await;
    for name in [
        "000000010000000000000002.00000028.backup",
        "000000010000000000000004.partial",
        "00000001.history",
    ] {
        put_wal(&repo, WalFileName::parse(name).unwrap()).await;
    }
    repo
}

fn labels(fates: &[crate::expire::BackupFate]) -> Vec<&str> {
    fates.iter().map(|f| f.label.as_str()).collect()
}

fn check_plan(report: &ExpireReport) {
    assert_eq!(labels(&report.expired), ["a"]);
    assert_eq!(labels(&report.kept), ["b", "c"]);
    assert!(
        report.kept[1].reason.contains("newest"),
        "{:?}",
        report.kept
    );
    // WAL before b's start segment (5) goes: segments 1-4, the .backup and .partial files.
    assert_eq!(
        report.wal.kept_from.as_deref(),
        Some("000000010000000000000005")
    );
    assert_eq!(report.wal.segments, 4);
    assert_eq!(report.wal.other_files, 2);
    assert_eq!(
        report.wal.first.as_deref(),
        Some("000000010000000000000001")
    );
    // Chunk 1 (only a's) and chunk 9 (nobody's) go; 2, 3, 4 stay.
    assert_eq!(report.chunks.count, 2);
    assert_eq!(report.chunks.remaining, 3);
    assert_eq!(
        report.window_before.earliest.as_deref(),
        Some("2026-01-01T12:00:00Z")
    );
    assert_eq!(
        report.window_after.earliest.as_deref(),
        Some("2026-02-01T12:00:00Z")
    );
    assert_eq!(
        report.window_after.latest_wal.as_deref(),
        Some("00000001000000000000000A")
    );
}

#[tokio::test]
async fn a_dry_run_plans_and_changes_nothing() {
    let repo = repository().await;
    let before = keys_under(&repo, "").await;
    let report = expire(&repo, &keep_last(2, true)).await.unwrap();
    assert!(report.dry_run);
    check_plan(&report);
    assert_eq!(keys_under(&repo, "").await, before);
}

#[tokio::test]
async fn a_run_deletes_what_the_plan_names_and_a_second_run_nothing() {
    let repo = repository().await;
    let report = expire(&repo, &keep_last(2, false)).await.unwrap();
    check_plan(&report);
    let labels: Vec<String> = repo
        .manifests()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.label)
        .collect();
    assert_eq!(labels, ["b", "c"]);
    let chunks = keys_under(&repo, keys::CHUNK_PREFIX).await;
    let want: BTreeSet<String> = [2, 3, 4].into_iter().map(|b| chunk(b).key()).collect();
    assert_eq!(chunks, want);
    let wal: Vec<String> = repo
        .list_wal()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name.to_string())
        .collect();
    assert_eq!(wal.first().map(String::as_str), Some("00000001.history"));
    assert_eq!(wal[1], "000000010000000000000005");
    assert_eq!(wal.len(), 1 + 6);
    // Nothing is left holding the lock.
    assert!(keys_under(&repo, keys::LOCK_PREFIX).await.is_empty());

    let again = expire(&repo, &keep_last(2, false)).await.unwrap();
    assert!(again.expired.is_empty());
    assert_eq!((again.wal.segments, again.wal.other_files), (0, 0));
    assert_eq!(again.chunks.count, 0);
    assert_eq!(again.bytes_freed, 0);
}

/// WAL on a timeline newer than every kept backup's stays, whatever its position; the window
/// ends before the first gap after the newest backup.
#[tokio::test]
async fn newer_timelines_and_gaps_bound_what_goes_and_the_window() {
    let repo = repo().await;
    backup(
        &repo,
        &manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &[chunk(1)]),
    )
    .await;
    backup(
        &repo,
        &manifest("b", 1, (5, 6), "2026-02-01T12:00:00Z", &[chunk(2)]),
    )
    .await;
    archive(&repo, 1, [1, 2, 3, 4, 5, 6, 7, 9]).await;
    archive(&repo, 2, [1, 2]).await;
    let report = expire(&repo, &keep_last(1, true)).await.unwrap();
    assert_eq!(labels(&report.expired), ["a"]);
    assert_eq!(report.wal.segments, 4);
    assert_eq!(report.wal.last.as_deref(), Some("000000010000000000000004"));
    assert_eq!(
        report.window_after.latest_wal.as_deref(),
        Some("000000010000000000000007")
    );
}

#[tokio::test]
async fn keep_days_keeps_the_backup_that_opens_the_window() {
    let repo = repository().await;
    let report = expire(
        &repo,
        &ExpireOptions {
            keep_last: None,
            keep_days: Some(36500),
            dry_run: true,
            dumps: None,
        },
    )
    .await
    .unwrap();
    assert!(report.expired.is_empty());
    assert_eq!(report.chunks.count, 1, "only the chunk nobody references");
    assert_eq!(report.wal.segments, 1, "only the segment before a's start");
}
