//! Unit tests of `lock`.

use super::*;
use crate::InitOptions;

async fn repo(dir: &std::path::Path) -> Repository {
    let store = lifeboat_storage::open_or_create(
        dir.to_str().unwrap(),
        &lifeboat_storage::StorageSettings::default(),
    )
    .unwrap();
    Repository::init(store, InitOptions::default())
        .await
        .unwrap()
}

fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn staleness() {
    let now = OffsetDateTime::now_utc();
    let limit = Duration::from_secs(600);
    let mut rec = LockRecord::for_this_process(LockKind::Backup).unwrap();
    assert_eq!(rec.stale_reason(now, limit), None, "our own live process");
    rec.pid = dead_pid();
    assert!(
        rec.stale_reason(now, limit)
            .unwrap()
            .contains("no longer exists")
    );
    // Elsewhere (another machine): only the heartbeat counts.
    rec.host = "elsewhere".into();
    assert_eq!(rec.stale_reason(now, limit), None);
    rec.heartbeat = (now - time::Duration::minutes(11))
        .format(&Rfc3339)
        .unwrap();
    assert!(rec.stale_reason(now, limit).unwrap().contains("heartbeat"));
    // Same host name, another PID namespace (a container): the pid says nothing.
    let mut rec = LockRecord::for_this_process(LockKind::Expire).unwrap();
    rec.pid = dead_pid();
    rec.pid_scope = Some("other-boot:pid:[1]".into());
    assert_eq!(rec.stale_reason(now, limit), None);
}

#[tokio::test]
async fn exclusive_released_and_stale_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&dir.path().join("repo")).await;
    let mut first = RepoLock::acquire(&repo, LockKind::Backup).await.unwrap();
    first.check_held().await.unwrap();
    for kind in [LockKind::Backup, LockKind::Expire] {
        match RepoLock::acquire(&repo, kind).await {
            Err(LockError::Held { holders, keys, .. }) => {
                assert_eq!(keys, vec![first.key().to_string()]);
                assert!(holders[0].contains(&std::process::id().to_string()));
            }
            other => panic!("expected Held, got {other:?}"),
        }
    }
    assert_eq!(
        repo.locks().await.unwrap().len(),
        1,
        "refusals leave no lock"
    );
    first.release().await;
    assert!(repo.locks().await.unwrap().is_empty());

    // A lock of a process that died on this machine is taken over at once.
    let mut dead = LockRecord::for_this_process(LockKind::Backup).unwrap();
    dead.pid = dead_pid();
    repo.put_lock(&dead, PutMode::Create).await.unwrap();
    let mut taker = RepoLock::acquire(&repo, LockKind::Expire).await.unwrap();
    let left: Vec<String> = repo
        .locks()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(left, vec![taker.key().to_string()]);
    taker.release().await;
}

#[tokio::test]
async fn a_holder_whose_lock_was_taken_over_knows_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&dir.path().join("repo")).await;
    // Deleted between two heartbeats (as a takeover would): the next heartbeat notices and
    // does not write the lock again.
    let settings = LockSettings {
        heartbeat: Duration::from_millis(400),
        ..LockSettings::default()
    };
    let mut lock = RepoLock::acquire_with(&repo, LockKind::Backup, settings)
        .await
        .unwrap();
    let (_, plain) = repo.get_object(lock.key()).await.unwrap();
    let rec: LockRecord = serde_json::from_slice(&plain).unwrap();
    assert_eq!(rec.id, lock.record().id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    repo.delete_lock(lock.key()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        lock.beat.lost().is_some(),
        "the heartbeat saw the lock gone"
    );
    assert!(matches!(
        lock.check_held().await,
        Err(LockError::Lost { .. })
    ));
    assert!(
        repo.locks().await.unwrap().is_empty(),
        "the heartbeat does not bring a deleted lock back"
    );
    lock.release().await;
}

#[tokio::test]
async fn a_dump_runs_beside_a_backup_and_excludes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(&dir.path().join("repo")).await;
    let mut backup = RepoLock::acquire(&repo, LockKind::Backup).await.unwrap();
    let mut dump = RepoLock::acquire(&repo, LockKind::Dump)
        .await
        .expect("a dump may run beside a backup");
    for kind in [LockKind::Dump, LockKind::Expire, LockKind::Passphrase] {
        assert!(
            matches!(
                RepoLock::acquire(&repo, kind).await,
                Err(LockError::Held { .. })
            ),
            "{kind} must wait for the dump"
        );
    }
    backup.release().await;
    // A backup that starts while a dump runs.
    let mut second = RepoLock::acquire(&repo, LockKind::Backup).await.unwrap();
    second.release().await;
    dump.release().await;
    let mut expire = RepoLock::acquire(&repo, LockKind::Expire).await.unwrap();
    assert!(matches!(
        RepoLock::acquire(&repo, LockKind::Dump).await,
        Err(LockError::Held { .. })
    ));
    expire.release().await;
    assert!(LockKind::Dump.excluded_by("something-newer"));
}
