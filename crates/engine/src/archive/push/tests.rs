//! The hand-over between a waiting `wal-push` and the background pusher: markers, error files and
//! the lock, with the pusher's side played by the test.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::state::{PushFailure, PusherDir, PusherLock};
use super::{Marker, PushOptions, Waited, wait_for_pusher};

const NAME: &str = "000000010000000000000003";
const DESCRIPTION: &str = "s3://bucket/prefix";

struct Wal {
    _dir: tempfile::TempDir,
    wal: PathBuf,
    file: PathBuf,
    options: PushOptions,
}

impl Wal {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("pg_wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        let file = wal.join(NAME);
        fs::write(&file, b"segment").unwrap();
        fs::write(
            wal.join("archive_status").join(format!("{NAME}.ready")),
            b"",
        )
        .unwrap();
        Self {
            _dir: dir,
            wal,
            file,
            options: PushOptions {
                parallel: 4,
                spool_dir: None,
            },
        }
    }

    fn subdir(&self) -> String {
        crate::archive::spool_subdir_of(DESCRIPTION)
    }

    fn markers(&self) -> PathBuf {
        super::spool_of(&self.wal, &self.options)
            .join("pushed")
            .join(self.subdir())
    }

    fn pusher_dir(&self) -> PusherDir {
        PusherDir::new(&self.wal, &self.options, &self.subdir())
    }

    fn write_marker(&self, text: &str) {
        fs::create_dir_all(self.markers()).unwrap();
        fs::write(self.markers().join(NAME), text).unwrap();
    }

    async fn wait(&self, start: impl FnMut(i32) -> std::io::Result<()>) -> Waited {
        wait_for_pusher(
            &self.file,
            &self.options,
            DESCRIPTION,
            start,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_marker_written_by_the_started_pusher_is_success_and_consumed() {
    let wal = Wal::new();
    let mut starts = 0;
    let waited = wal
        .wait(|fd| {
            assert!(fd > 2);
            starts += 1;
            wal.write_marker(&Marker::of(&wal.file).unwrap().text());
            Ok(())
        })
        .await;
    assert!(matches!(waited, Waited::Stored), "{waited:?}");
    assert_eq!(starts, 1);
    assert!(!wal.markers().join(NAME).exists());
}

#[tokio::test]
async fn a_marker_that_no_longer_matches_the_file_means_push_it_here() {
    let wal = Wal::new();
    wal.write_marker("1 2 3 4\n");
    let waited = wal.wait(|_| panic!("no pusher needed")).await;
    assert!(matches!(waited, Waited::PushYourself(_)), "{waited:?}");
}

#[tokio::test]
async fn the_pushers_error_is_returned_once_and_removed() {
    let wal = Wal::new();
    let dir = wal.pusher_dir();
    let waited = wal
        .wait(|_| {
            let failure = PushFailure {
                code: 4,
                message: "refused".into(),
                hint: Some("look".into()),
            };
            dir.write_error(NAME, &failure).unwrap();
            Ok(())
        })
        .await;
    match waited {
        Waited::Failed(f) => assert_eq!((f.code, f.message.as_str()), (4, "refused")),
        other => panic!("{other:?}"),
    }
    assert!(dir.error_names().is_empty());
}

#[tokio::test]
async fn a_pusher_that_keeps_leaving_without_the_file_is_started_three_times() {
    let wal = Wal::new();
    let mut starts = 0;
    let waited = wal
        .wait(|_| {
            starts += 1;
            Ok(())
        })
        .await;
    assert!(matches!(waited, Waited::PushYourself(_)), "{waited:?}");
    assert_eq!(starts, 3);
    let waited = wal.wait(|_| Err(std::io::Error::other("no exe"))).await;
    assert!(matches!(waited, Waited::PushYourself(ref why) if why.contains("no exe")));
}

#[tokio::test]
async fn while_a_pusher_holds_the_lock_none_is_started_and_the_wait_times_out() {
    let wal = Wal::new();
    let dir = wal.pusher_dir();
    let held = PusherLock::acquire(&dir, None).unwrap().expect("free");
    assert!(PusherLock::acquire(&dir, None).unwrap().is_none());
    let waited = wait_for_pusher(
        &wal.file,
        &wal.options,
        DESCRIPTION,
        |_| panic!("a pusher runs"),
        Duration::from_millis(50),
    )
    .await
    .unwrap();
    assert!(matches!(waited, Waited::TimedOut(_)), "{waited:?}");
    held.unlock();
    assert!(held.try_relock());
}

#[test]
fn an_inherited_descriptor_must_be_the_lock_file() {
    use std::os::fd::AsRawFd as _;
    let wal = Wal::new();
    let dir = wal.pusher_dir();
    let lock = dir.open_lock().unwrap();
    lock.try_lock().unwrap();
    // Same open file description: the lock is already this process's.
    assert!(
        PusherLock::acquire(&dir, Some(lock.as_raw_fd()))
            .unwrap()
            .is_some()
    );
    let other = fs::File::open(&wal.file).unwrap();
    assert!(PusherLock::acquire(&dir, Some(other.as_raw_fd())).is_err());
}

fn names(v: Vec<lifeboat_pg::walname::WalFileName>) -> Vec<String> {
    v.into_iter().map(|n| n.to_string()).collect()
}

fn set(items: &[&str]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_pusher_takes_history_first_then_oldest_skipping_what_is_done_or_failed() {
    let wal = Wal::new();
    let dir = wal.pusher_dir();
    dir.open_lock().unwrap();
    let ready = set(&[
        "000000010000000000000005",
        "000000010000000000000001",
        "00000002.history",
        "000000010000000000000002",
        "000000010000000000000004",
        NAME,
    ]);
    fs::create_dir_all(wal.markers()).unwrap();
    fs::write(wal.markers().join("000000010000000000000002"), "x").unwrap();
    let failure = PushFailure {
        code: 5,
        message: "down".into(),
        hint: None,
    };
    dir.write_error("000000010000000000000004", &failure)
        .unwrap();
    let in_flight = set(&["000000010000000000000001"]);
    let mut stored = HashMap::new();
    stored.insert("000000010000000000000005".to_string(), None);
    stored.insert("000000010000000000000009".to_string(), None);
    let todo = super::ahead::to_push(&ready, &wal.markers(), &dir, &in_flight, &mut stored);
    assert_eq!(names(todo), vec!["00000002.history", NAME]);
    // Pruned to the .ready set; the consumed marker's grace has started.
    assert_eq!(stored.len(), 1);
    assert!(stored["000000010000000000000005"].is_some());
}

#[test]
fn markers_and_errors_of_files_no_longer_ready_are_removed() {
    let wal = Wal::new();
    let dir = wal.pusher_dir();
    fs::create_dir_all(wal.markers()).unwrap();
    for name in [NAME, "000000010000000000000001"] {
        fs::write(wal.markers().join(name), "x").unwrap();
        let failure = PushFailure {
            code: 5,
            message: "down".into(),
            hint: None,
        };
        dir.write_error(name, &failure).unwrap();
    }
    fs::write(wal.markers().join(".000000010000000000000007.tmp"), "x").unwrap();
    let ready = set(&[NAME]);
    super::ahead::prune_markers(&wal.markers(), &ready);
    dir.prune_errors(&ready);
    assert!(wal.markers().join(NAME).exists());
    assert!(!wal.markers().join("000000010000000000000001").exists());
    assert_eq!(fs::read_dir(wal.markers()).unwrap().count(), 1);
    assert_eq!(dir.error_names(), ready);
}
