//! One behavioural suite for every backend: each case is a generic async fn over `&dyn Store`, run
//! against a local directory and against S3 on a real moto server (a fresh server and bucket per
//! test). A test that cannot start moto fails; it never skips. Backend-specific checks (file modes,
//! temp files, prefixes, missing buckets) and the deadline/retry behaviour against dead endpoints
//! follow the shared cases.

// Helpers outside #[test] fns are not covered by clippy's allow-unwrap-in-tests.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::{
    ErrorKind, ObjectMeta, PutMode, RetryPolicy, S3Settings, StorageSettings, Store, open,
    open_or_create,
};
use lifeboat_testkit::s3::MotoServer;

/// A store under test plus whatever must outlive it.
struct Fixture {
    store: Arc<dyn Store>,
    /// Root directory of a local store.
    root: Option<PathBuf>,
    _tempdir: Option<tempfile::TempDir>,
    server: Option<MotoServer>,
}

fn local_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let store = open_or_create(root.to_str().unwrap(), &StorageSettings::default()).unwrap();
    Fixture {
        store,
        root: Some(root),
        _tempdir: Some(dir),
        server: None,
    }
}

fn test_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(30),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    }
}

fn s3_settings(server: &MotoServer, policy: RetryPolicy) -> StorageSettings {
    let env: HashMap<String, String> = server.env().into_iter().collect();
    StorageSettings {
        retry: policy,
        s3: S3Settings {
            endpoint: Some(env["AWS_ENDPOINT_URL"].clone()),
            region: Some(env["AWS_REGION"].clone()),
            access_key_id: Some(env["AWS_ACCESS_KEY_ID"].clone()),
            secret_access_key: Some(env["AWS_SECRET_ACCESS_KEY"].clone()),
            session_token: None,
            allow_http: Some(true),
        },
        ..StorageSettings::default()
    }
}

/// A fresh moto server and bucket; the store sits under a prefix to exercise key mapping.
fn s3_fixture() -> Fixture {
    let server = MotoServer::start().unwrap();
    server.create_bucket("conformance").unwrap();
    let store = open(
        "s3://conformance/some/prefix",
        &s3_settings(&server, test_policy()),
    )
    .unwrap();
    Fixture {
        store,
        root: None,
        _tempdir: None,
        server: Some(server),
    }
}

/// Deterministic bytes that differ at every offset, so a misplaced range or a truncated object
/// cannot compare equal by accident.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn keys(metas: &[ObjectMeta]) -> Vec<String> {
    let mut keys: Vec<String> = metas.iter().map(|m| m.key.clone()).collect();
    keys.sort();
    keys
}

async fn assert_kind<T: std::fmt::Debug>(
    result: lifeboat_storage::Result<T>,
    kind: ErrorKind,
    what: &str,
) {
    match result {
        Err(e) => assert_eq!(e.kind, kind, "{what}: {e}"),
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
    }
}

// ---- shared cases -------------------------------------------------------------------------

async fn put_get_round_trip(store: &dyn Store) {
    let small = Bytes::from_static(b"hello, lifeboat");
    store
        .put("small", small.clone(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("small").await.unwrap(), small);
    assert_eq!(
        store.head("small").await.unwrap(),
        ObjectMeta {
            key: "small".into(),
            size: 15
        }
    );

    store
        .put("empty", Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("empty").await.unwrap(), Bytes::new());
    assert_eq!(store.head("empty").await.unwrap().size, 0);

    let big = pattern(20 << 20, 7);
    store
        .put("base/2024/big.tar", big.clone(), PutMode::Create)
        .await
        .unwrap();
    let back = store.get("base/2024/big.tar").await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "20 MiB object came back different");
    assert_eq!(
        store.head("base/2024/big.tar").await.unwrap().size,
        20 << 20
    );
}

async fn create_on_existing_key_fails_and_keeps_bytes(store: &dyn Store) {
    store
        .put(
            "wal/000000010000000000000001",
            pattern(1000, 1),
            PutMode::Create,
        )
        .await
        .unwrap();
    let second = store
        .put(
            "wal/000000010000000000000001",
            pattern(500, 2),
            PutMode::Create,
        )
        .await;
    assert_kind(second, ErrorKind::AlreadyExists, "second create").await;
    assert_eq!(
        store.get("wal/000000010000000000000001").await.unwrap(),
        pattern(1000, 1)
    );
    assert!(
        store.capabilities().conditional_create,
        "{}",
        store.describe()
    );
    assert!(store.capabilities().durable_put);
}

async fn overwrite_replaces(store: &dyn Store) {
    store
        .put("catalog.json", pattern(300, 3), PutMode::Overwrite)
        .await
        .unwrap();
    store
        .put("catalog.json", pattern(100, 4), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(store.get("catalog.json").await.unwrap(), pattern(100, 4));
    assert_eq!(store.head("catalog.json").await.unwrap().size, 100);

    store
        .put("created", pattern(10, 5), PutMode::Create)
        .await
        .unwrap();
    store
        .put("created", pattern(20, 6), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(store.get("created").await.unwrap(), pattern(20, 6));
}

async fn missing_keys_are_not_found(store: &dyn Store) {
    assert_kind(store.get("nope").await, ErrorKind::NotFound, "get").await;
    assert_kind(store.head("nope").await, ErrorKind::NotFound, "head").await;
    assert_kind(
        store.get_range("nope", 0, 10).await,
        ErrorKind::NotFound,
        "get_range",
    )
    .await;
    assert_kind(
        store.get("no/such/dir/key").await,
        ErrorKind::NotFound,
        "nested get",
    )
    .await;
    // A "directory" that only exists because of a deeper key is not an object.
    store
        .put("dir/inner", Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap();
    assert_kind(
        store.get("dir").await,
        ErrorKind::NotFound,
        "get of a directory",
    )
    .await;
    assert_kind(
        store.head("dir").await,
        ErrorKind::NotFound,
        "head of a directory",
    )
    .await;
}

async fn get_range_clamps(store: &dyn Store) {
    let data = pattern(100, 9);
    store.put("r", data.clone(), PutMode::Create).await.unwrap();
    let cases: [(u64, u64, std::ops::Range<usize>); 7] = [
        (0, 100, 0..100),
        (10, 20, 10..20),
        (90, 200, 90..100),
        (0, u64::MAX, 0..100),
        (99, 100, 99..100),
        (100, 110, 0..0),
        (150, 160, 0..0),
    ];
    for (start, end, expected) in cases {
        let got = store.get_range("r", start, end).await.unwrap();
        assert_eq!(got, data.slice(expected.clone()), "range {start}..{end}");
    }
    assert_eq!(store.get_range("r", 5, 5).await.unwrap(), Bytes::new());
    assert_eq!(store.get_range("r", 20, 10).await.unwrap(), Bytes::new());

    store
        .put("r-empty", Bytes::new(), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        store.get_range("r-empty", 0, 10).await.unwrap(),
        Bytes::new()
    );
}

async fn list_by_prefix(store: &dyn Store) {
    let objects = [
        ("wal/000000010000000000000001", 11),
        ("wal/000000010000000000000002", 12),
        ("wal/00000002.history", 13),
        ("base/20240101/data.tar", 14),
        ("base/20240101/manifest", 15),
        ("base/20240102/deep/er/x", 16),
        ("top", 17),
    ];
    for (key, len) in objects {
        store
            .put(key, pattern(len, len as u64), PutMode::Create)
            .await
            .unwrap();
    }
    let all = store.list("").await.unwrap();
    let mut expected: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
    expected.sort();
    assert_eq!(keys(&all), expected);
    for meta in &all {
        let (_, len) = objects.iter().find(|(k, _)| *k == meta.key).unwrap();
        assert_eq!(meta.size, *len as u64, "{}", meta.key);
    }

    assert_eq!(
        keys(&store.list("wal/").await.unwrap()),
        [
            "wal/000000010000000000000001",
            "wal/000000010000000000000002",
            "wal/00000002.history"
        ]
    );
    assert_eq!(
        keys(&store.list("base/20240101/").await.unwrap()),
        ["base/20240101/data.tar", "base/20240101/manifest"]
    );
    assert_eq!(store.list("base/").await.unwrap().len(), 3);
    // A partial last component filters by name.
    assert_eq!(
        keys(&store.list("wal/00000001").await.unwrap()),
        [
            "wal/000000010000000000000001",
            "wal/000000010000000000000002"
        ]
    );
    assert_eq!(keys(&store.list("base/2024010").await.unwrap()).len(), 3);
    assert!(store.list("nothing/").await.unwrap().is_empty());
    assert!(store.list("wal/zzz").await.unwrap().is_empty());
    assert!(store.list("top/").await.unwrap().is_empty());
}

async fn delete_present_and_missing(store: &dyn Store) {
    store
        .put("a/b/c", pattern(10, 1), PutMode::Create)
        .await
        .unwrap();
    store
        .put("a/b/d", pattern(10, 2), PutMode::Create)
        .await
        .unwrap();
    store.delete("a/b/c").await.unwrap();
    assert_kind(
        store.head("a/b/c").await,
        ErrorKind::NotFound,
        "head after delete",
    )
    .await;
    assert_eq!(keys(&store.list("a/").await.unwrap()), ["a/b/d"]);
    store.delete("a/b/c").await.unwrap();
    store.delete("never/was/here").await.unwrap();
    // The key can be created again after deletion.
    store
        .put("a/b/c", pattern(5, 3), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("a/b/c").await.unwrap(), pattern(5, 3));
}

async fn invalid_keys_are_rejected(store: &dyn Store) {
    let bad = [
        "",
        "/abs",
        "a//b",
        "a/",
        "./a",
        "a/./b",
        "../x",
        "a/../b",
        "a/..",
        "sp ace",
        "tab\t",
        "é",
        "back\\slash",
        "q?x",
        "star*",
        ".tmp.x",
        "d/.tmp.y",
        "new\nline",
    ];
    for key in bad {
        let data = Bytes::from_static(b"x");
        assert_kind(
            store.put(key, data, PutMode::Overwrite).await,
            ErrorKind::Permanent,
            key,
        )
        .await;
        assert_kind(
            store.put(key, Bytes::new(), PutMode::Create).await,
            ErrorKind::Permanent,
            key,
        )
        .await;
        assert_kind(store.get(key).await, ErrorKind::Permanent, key).await;
        assert_kind(store.get_range(key, 0, 1).await, ErrorKind::Permanent, key).await;
        assert_kind(store.head(key).await, ErrorKind::Permanent, key).await;
        assert_kind(store.delete(key).await, ErrorKind::Permanent, key).await;
    }
    for prefix in ["/", "../", "a//", "a/../", "sp ace/", ".tmp.1/"] {
        assert_kind(store.list(prefix).await, ErrorKind::Permanent, prefix).await;
    }
    // Unusual but valid keys are accepted.
    for key in ["A-Z_a.z-0.9", "x/.hidden", "...", "a/b.tmp.c"] {
        store
            .put(key, Bytes::from_static(b"ok"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(
            store.get(key).await.unwrap(),
            Bytes::from_static(b"ok"),
            "{key}"
        );
    }
    assert!(
        store
            .list("")
            .await
            .unwrap()
            .iter()
            .all(|m| !m.key.is_empty())
    );
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::local_fixture();
                    super::$case(&*fixture.store).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::s3_fixture();
                    super::$case(&*fixture.store).await;
                    drop(fixture.server);
                }
            )*
        }
    };
}

conformance!(
    put_get_round_trip,
    create_on_existing_key_fails_and_keeps_bytes,
    overwrite_replaces,
    missing_keys_are_not_found,
    get_range_clamps,
    list_by_prefix,
    delete_present_and_missing,
    invalid_keys_are_rejected,
);

// ---- local only -----------------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn local_files_are_0600_and_directories_0700() {
    let fixture = local_fixture();
    let root = fixture.root.as_deref().unwrap();
    assert_eq!(mode(root), 0o700, "root");
    fixture
        .store
        .put("a/b/c", pattern(10, 1), PutMode::Create)
        .await
        .unwrap();
    fixture
        .store
        .put("a/top", pattern(10, 2), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(mode(&root.join("a")), 0o700);
    assert_eq!(mode(&root.join("a/b")), 0o700);
    assert_eq!(mode(&root.join("a/b/c")), 0o600);
    assert_eq!(mode(&root.join("a/top")), 0o600);
    // No temp files are left behind by successful or failed puts.
    let again = fixture
        .store
        .put("a/b/c", pattern(10, 3), PutMode::Create)
        .await;
    assert_kind(again, ErrorKind::AlreadyExists, "second create").await;
    let names: Vec<String> = std::fs::read_dir(root.join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["c"]);
}

#[tokio::test]
async fn local_leftover_temp_files_are_not_listed() {
    let fixture = local_fixture();
    let root = fixture.root.as_deref().unwrap();
    fixture
        .store
        .put("wal/1", pattern(10, 1), PutMode::Create)
        .await
        .unwrap();
    // What a crash in the middle of a put leaves behind.
    std::fs::write(root.join(".tmp.0123456789abcdef"), b"partial").unwrap();
    std::fs::write(root.join("wal/.tmp.fedcba9876543210"), b"partial").unwrap();
    std::fs::create_dir(root.join(".tmp.dir")).unwrap();
    std::fs::write(root.join(".tmp.dir/x"), b"partial").unwrap();
    assert_eq!(keys(&fixture.store.list("").await.unwrap()), ["wal/1"]);
    assert_eq!(keys(&fixture.store.list("wal/").await.unwrap()), ["wal/1"]);
    fixture
        .store
        .put("wal/2", pattern(10, 2), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        keys(&fixture.store.list("wal/").await.unwrap()),
        ["wal/1", "wal/2"]
    );
}

#[tokio::test]
async fn local_open_requires_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let settings = StorageSettings::default();
    let missing = dir.path().join("missing");
    let err = open(missing.to_str().unwrap(), &settings).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert!(
        err.message.contains(missing.to_str().unwrap()),
        "{}",
        err.message
    );
    assert!(!missing.exists(), "open must not create the directory");

    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = open(file.to_str().unwrap(), &settings).unwrap_err();
    assert!(err.message.contains("not a directory"), "{}", err.message);
    let url = format!("file://{}", file.display());
    assert_eq!(
        open(&url, &settings).unwrap_err().kind,
        ErrorKind::Permanent
    );

    let nested = dir.path().join("x/y/repo");
    open_or_create(nested.to_str().unwrap(), &settings).unwrap();
    assert_eq!(mode(&nested), 0o700);
    let url = format!("file://{}", nested.display());
    let store = open(&url, &settings).unwrap();
    store
        .put("k", Bytes::from_static(b"v"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(std::fs::read(nested.join("k")).unwrap(), b"v");
}

#[tokio::test]
async fn local_key_under_a_file_is_a_permanent_error() {
    let fixture = local_fixture();
    fixture
        .store
        .put("f", pattern(3, 1), PutMode::Create)
        .await
        .unwrap();
    let err = fixture
        .store
        .put("f/g", pattern(3, 2), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
    assert_kind(
        fixture.store.get("f/g").await,
        ErrorKind::NotFound,
        "get under a file",
    )
    .await;
}

// ---- S3 only --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keys_live_under_the_location_prefix() {
    let server = MotoServer::start().unwrap();
    server.create_bucket("prefixes").unwrap();
    let settings = s3_settings(&server, test_policy());
    let inner = open("s3://prefixes/team/db1/", &settings).unwrap();
    let other = open("s3://prefixes/team/db2", &settings).unwrap();
    let whole = open("s3://prefixes", &settings).unwrap();
    assert_eq!(inner.describe(), "s3://prefixes/team/db1");
    inner
        .put("wal/1", pattern(10, 1), PutMode::Create)
        .await
        .unwrap();
    other
        .put("wal/1", pattern(10, 2), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(
        keys(&whole.list("").await.unwrap()),
        ["team/db1/wal/1", "team/db2/wal/1"]
    );
    assert_eq!(keys(&inner.list("").await.unwrap()), ["wal/1"]);
    assert_eq!(whole.get("team/db2/wal/1").await.unwrap(), pattern(10, 2));
    inner.delete("wal/1").await.unwrap();
    assert_eq!(keys(&whole.list("").await.unwrap()), ["team/db2/wal/1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_missing_bucket_is_permanent() {
    let server = MotoServer::start().unwrap();
    let store = open(
        "s3://no-such-bucket/p",
        &s3_settings(&server, test_policy()),
    )
    .unwrap();
    let started = Instant::now();
    let err = store
        .put("k", pattern(10, 1), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent, "{err}");
    assert!(err.message.contains("s3://no-such-bucket/p"), "{err}");
    assert!(
        !err.message.contains("testing"),
        "credentials in message: {err}"
    );
    assert_kind(
        store.put("k", Bytes::new(), PutMode::Overwrite).await,
        ErrorKind::Permanent,
        "put",
    )
    .await;
    assert_kind(store.list("").await, ErrorKind::Permanent, "list").await;
    assert_kind(store.get("k").await, ErrorKind::Permanent, "get").await;
    // Permanent errors are not retried.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

// ---- deadlines and retries ------------------------------------------------------------------

fn dead_endpoint_settings(port: u16, policy: RetryPolicy) -> StorageSettings {
    StorageSettings {
        retry: policy,
        s3: S3Settings {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            session_token: None,
            allow_http: Some(true),
        },
        ..StorageSettings::default()
    }
}

#[tokio::test]
async fn closed_port_fails_transient_within_bounded_time() {
    // Bind and release a port so nothing listens on it.
    let port = lifeboat_testkit::free_port();
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_secs(5),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let store = open("s3://bucket/p", &dead_endpoint_settings(port, policy)).unwrap();
    let started = Instant::now();
    let err = store
        .put("k", pattern(10, 1), PutMode::Create)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    assert!(err.message.contains("3 attempts"), "{err}");
    assert!(err.message.contains("cannot connect"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_kind(store.get("k").await, ErrorKind::Transient, "get").await;
    assert_kind(store.list("").await, ErrorKind::Transient, "list").await;
}

#[tokio::test]
async fn silent_server_trips_the_attempt_timeout() {
    // Accepts TCP (the kernel completes the handshake) but never reads or answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_millis(500),
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
    };
    let store = open("s3://bucket/p", &dead_endpoint_settings(port, policy)).unwrap();
    let started = Instant::now();
    let err = store.get("k").await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    assert!(err.message.contains("timed out after 0.5s"), "{err}");
    assert!(err.message.contains("2 attempts"), "{err}");
    assert!(elapsed >= Duration::from_secs(1), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let started = Instant::now();
    assert_kind(
        store.put("k", pattern(1 << 20, 1), PutMode::Create).await,
        ErrorKind::Transient,
        "put",
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(listener);
}
