//! WAL gap analysis over a repository's listing: the check `backup` and `restore` make, `info`'s
//! gaps per timeline and `list`'s window.

use lifeboat_repo::keys;
use lifeboat_storage::PutMode;

use super::*;
use crate::walcheck::{missing_segments, wait_for_segments};

fn names(m: &crate::walcheck::Missing) -> Vec<String> {
    m.named.iter().map(|n| n.to_string()).collect()
}

/// A narrow range is listed directory by directory, a wide one with one listing of the timeline:
/// both give the same answer, across log boundaries (256 segments of 16 MiB per log).
#[tokio::test]
async fn narrow_and_wide_ranges_find_the_same_holes() {
    let repo = repo().await;
    archive(&repo, 1, [254, 255, 257, 258, 259, 1300]).await;
    archive(&repo, 2, [256]).await;

    let narrow = missing_segments(&repo, &seg(1, 254), &seg(1, 259), SEG)
        .await
        .unwrap();
    assert_eq!(names(&narrow), ["000000010000000100000000"]);
    assert_eq!(narrow.count, 1);

    // 254..=1300 spans 5 logs: one listing of timeline 1.
    let wide = missing_segments(&repo, &seg(1, 254), &seg(1, 1300), SEG)
        .await
        .unwrap();
    assert_eq!(wide.count, 1300 - 254 + 1 - 6);
    assert_eq!(
        wide.first().map(|s| s.to_string()).as_deref(),
        Some("000000010000000100000000")
    );
    assert_eq!(wide.named.len(), crate::walcheck::NAMED_MAX);
    assert_eq!(wide.last, Some(seg(1, 1299)));

    let none = missing_segments(&repo, &seg(1, 257), &seg(1, 259), SEG)
        .await
        .unwrap();
    assert!(none.is_empty());
    // A range across timelines, or backwards, asks about nothing.
    assert!(
        missing_segments(&repo, &seg(1, 1), &seg(2, 9), SEG)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        missing_segments(&repo, &seg(1, 9), &seg(1, 1), SEG)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An object too short to hold an object header (a 0-byte one) does not hold the segment.
#[tokio::test]
async fn an_empty_object_is_a_missing_segment() {
    let repo = repo().await;
    archive(&repo, 1, [1, 3]).await;
    let key = keys::wal(&WalFileName::Segment(seg(1, 2)));
    repo.store()
        .put(&key, Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    let missing = missing_segments(&repo, &seg(1, 1), &seg(1, 3), SEG)
        .await
        .unwrap();
    assert_eq!(names(&missing), ["000000010000000000000002"]);
}

#[tokio::test]
async fn waiting_for_wal_that_does_not_come_names_it() {
    let repo = repo().await;
    archive(&repo, 1, [1]).await;
    let err = wait_for_segments(
        &repo,
        &seg(1, 1),
        &seg(1, 2),
        SEG,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing 000000010000000000000002"), "{err}");
    wait_for_segments(
        &repo,
        &seg(1, 1),
        &seg(1, 1),
        SEG,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn info_names_every_gap_per_timeline() {
    let repo = repo().await;
    archive(&repo, 1, [1, 2, 4, 8, 9]).await;
    put_wal(&repo, WalFileName::Partial(seg(2, 9))).await;
    put_wal(&repo, WalFileName::History(tli(2))).await;
    let info = crate::info::info(&repo).await.unwrap();
    assert_eq!(info.timelines.len(), 2);
    let one = &info.timelines[0];
    assert_eq!(one.segments, 5);
    assert_eq!(one.first_segment, "000000010000000000000001");
    assert_eq!(one.last_segment, "000000010000000000000009");
    let gaps: Vec<(&str, &str, u64)> = one
        .gaps
        .iter()
        .map(|g| (g.first_missing.as_str(), g.last_missing.as_str(), g.count))
        .collect();
    assert_eq!(
        gaps,
        [
            ("000000010000000000000003", "000000010000000000000003", 1),
            ("000000010000000000000005", "000000010000000000000007", 3)
        ]
    );
    // A timeline with only a .partial file is shown, without segments.
    let two = &info.timelines[1];
    assert_eq!((two.timeline, two.segments), (2, 0));
    assert_eq!(two.partial_files, ["000000020000000000000009.partial"]);
    assert_eq!(info.history_files, ["00000002.history"]);
    assert_eq!(info.wal_files, 7);
}

/// `list`'s window reaches the end of the unbroken run after the newest backup's stop segment.
#[tokio::test]
async fn the_window_ends_before_the_first_gap_after_the_newest_backup() {
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
    archive(&repo, 1, [2, 3, 5, 6, 7, 8, 10]).await;
    archive(&repo, 2, [9]).await;
    let listing = crate::list::list(&repo).await.unwrap();
    assert_eq!(listing.backups.len(), 2);
    assert_eq!(listing.backups[1].label, "b");
    assert_eq!(listing.backups[1].files, 1);
    assert_eq!(
        listing.window.latest_wal.as_deref(),
        Some("000000010000000000000008")
    );
    assert_eq!(
        listing.window.earliest.as_deref(),
        Some("2026-01-01T12:00:00Z")
    );
}
