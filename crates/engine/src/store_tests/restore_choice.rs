//! Restore: which backup a target chooses, from the manifests a repository holds, and what the
//! WAL check says about the segments recovery will need.

use lifeboat_pg::lsn::Lsn;
use lifeboat_pg::recovery::RecoveryTarget;

use super::*;
use crate::restore::plan::{check_wal, choose};

/// Three backups stored out of label order: `repo.manifests()` orders them by stop LSN.
async fn three_backups(repo: &Repository) -> Vec<Manifest> {
    for m in [
        manifest("c", 1, (8, 9), "2026-03-01T12:00:00Z", &[chunk(3)]),
        manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &[chunk(1)]),
        manifest("b", 1, (5, 6), "2026-02-01T12:00:00Z", &[chunk(2)]),
    ] {
        backup(repo, &m).await;
    }
    let manifests = repo.manifests().await.unwrap();
    let labels: Vec<&str> = manifests.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(labels, ["a", "b", "c"]);
    manifests
}

fn chosen(manifests: &[Manifest], label: Option<&str>, target: &RecoveryTarget) -> String {
    match choose(manifests, label, target) {
        Ok(m) => m.label.clone(),
        Err(e) => format!("refused: {e}"),
    }
}

#[tokio::test]
async fn the_newest_backup_that_ends_before_the_target_is_chosen() {
    let repo = repo().await;
    let ms = three_backups(&repo).await;
    let time = |t: &str| RecoveryTarget::Time(t.into());
    let lsn = |segno: u64, off: u64| RecoveryTarget::Lsn(Lsn(segno * SEG + off));

    assert_eq!(chosen(&ms, None, &RecoveryTarget::Latest), "c");
    assert_eq!(chosen(&ms, None, &RecoveryTarget::Immediate), "c");
    assert_eq!(chosen(&ms, Some("latest"), &RecoveryTarget::Latest), "c");
    assert_eq!(chosen(&ms, None, &time("2026-02-15 00:00:00+00")), "b");
    assert_eq!(chosen(&ms, None, &time("2026-03-01 12:00:01 UTC")), "c");
    // A backup ending exactly at the target does not reach it.
    assert_eq!(chosen(&ms, None, &time("2026-03-01T12:00:00Z")), "b");
    // By LSN: the stop LSN at or before the target.
    assert_eq!(chosen(&ms, None, &lsn(6, 100)), "b");
    assert_eq!(chosen(&ms, None, &lsn(6, 99)), "a");
    assert_eq!(chosen(&ms, None, &lsn(100, 0)), "c");
    // A named backup wins over the target.
    assert_eq!(chosen(&ms, Some("a"), &time("2026-03-05 00:00:00+00")), "a");

    let before = chosen(&ms, None, &time("2025-12-01 00:00:00+00"));
    assert!(
        before.contains("no backup ended before the target"),
        "{before}"
    );
    assert!(before.contains("2026-01-01T12:00:00Z"), "{before}");
    let unknown = chosen(&ms, Some("zz"), &RecoveryTarget::Latest);
    assert!(
        unknown.contains("no complete backup labelled zz"),
        "{unknown}"
    );
}

#[tokio::test]
async fn an_empty_repository_has_nothing_to_choose() {
    let repo = repo().await;
    let ms = repo.manifests().await.unwrap();
    let err = chosen(&ms, None, &RecoveryTarget::Latest);
    assert!(err.contains("holds no complete backup"), "{err}");
}

#[tokio::test]
async fn a_backup_missing_its_own_wal_is_refused() {
    let repo = repo().await;
    let m = manifest("a", 1, (2, 5), "2026-01-01T12:00:00Z", &[chunk(1)]);
    backup(&repo, &m).await;
    archive(&repo, 1, [2, 3, 5, 6]).await;
    let err = check_wal(&repo, &m, &RecoveryTarget::Latest, SEG)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("backup a cannot be restored"), "{err}");
    assert!(err.contains("000000010000000000000004"), "{err}");
    assert!(!err.contains("000000010000000000000006"), "{err}");
}

#[tokio::test]
async fn a_gap_after_the_backup_refuses_latest_and_warns_for_a_time() {
    let repo = repo().await;
    let m = manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &[chunk(1)]);
    backup(&repo, &m).await;
    // 2..=5 unbroken, then 6 and 7 missing, then 8.
    archive(&repo, 1, [2, 3, 4, 5, 8]).await;
    // Another timeline's segments are not this backup's WAL.
    archive(&repo, 2, [6, 7]).await;

    let (end, warnings) = check_wal(&repo, &m, &RecoveryTarget::Lsn(Lsn(5 * SEG)), SEG)
        .await
        .unwrap();
    assert_eq!(end.as_deref(), Some("000000010000000000000005"));
    assert!(warnings.is_empty(), "{warnings:?}");

    let err = check_wal(&repo, &m, &RecoveryTarget::Latest, SEG)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("from 000000010000000000000006 on"), "{err}");
    assert!(err.contains("000000010000000000000007"), "{err}");

    let target = RecoveryTarget::Time("2026-01-02 00:00:00+00".into());
    let (end, warnings) = check_wal(&repo, &m, &target, SEG).await.unwrap();
    assert_eq!(end.as_deref(), Some("000000010000000000000008"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("recovery stops there"), "{warnings:?}");

    // An LSN beyond everything archived names the first missing segment as where recovery stops.
    let far = RecoveryTarget::Lsn(Lsn(20 * SEG));
    let err = check_wal(&repo, &m, &far, SEG)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lies beyond the WAL archived"), "{err}");
    assert!(
        err.contains("recovery would stop at 000000010000000000000006"),
        "{err}"
    );
}

#[tokio::test]
async fn a_target_timeline_must_have_its_history_and_pass_through_the_backup() {
    use crate::restore::timeline::check_target_timeline;
    use lifeboat_pg::recovery::TargetTimeline;
    let repo = repo().await;
    // Started in segment 2 of timeline 1.
    let m = manifest("a", 1, (2, 3), "2026-01-01T12:00:00Z", &[chunk(1)]);
    let history = |timeline: u32, text: &'static str| {
        let repo = repo.clone();
        async move {
            repo.put_wal(&WalFileName::History(tli(timeline)), Bytes::from(text))
                .await
                .unwrap();
        }
    };
    // Timeline 2 left timeline 1 in segment 5, after the backup started; timeline 3 in segment
    // 1, before it.
    history(2, "1\t0/5000000\tno recovery target specified\n").await;
    history(3, "1\t0/1000000\tno recovery target specified\n").await;
    let check = |t: TargetTimeline| {
        let (repo, m) = (repo.clone(), m.clone());
        async move {
            match check_target_timeline(&repo, &m, &t).await {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            }
        }
    };
    assert_eq!(check(TargetTimeline::Latest).await, "ok");
    assert_eq!(check(TargetTimeline::Current).await, "ok");
    assert_eq!(check(TargetTimeline::Id(tli(1))).await, "ok");
    assert_eq!(check(TargetTimeline::Id(tli(2))).await, "ok");
    let missing = check(TargetTimeline::Id(tli(4))).await;
    assert!(missing.contains("no history file"), "{missing}");
    let elsewhere = check(TargetTimeline::Id(tli(3))).await;
    assert!(
        elsewhere.contains("does not pass through backup a") && elsewhere.contains("0/1000000"),
        "{elsewhere}"
    );
}
