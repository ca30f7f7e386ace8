//! Unit tests of `backup`.

use super::*;

#[test]
fn safe_paths() {
    for ok in [
        "base/1/1259",
        "PG_VERSION",
        "pg_tblspc/16384/PG_15_1/5/16385",
    ] {
        assert!(is_safe_relative_path(ok), "{ok}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "base/../../x",
        "base/./x",
        "base//x",
        "a/",
        "a\0b",
    ] {
        assert!(!is_safe_relative_path(bad), "{bad:?}");
    }
}

#[test]
fn entries_round_trip_in_json() {
    let id = ChunkId(ContentHash([7; 32]));
    let entries = vec![
        Entry::Dir {
            path: "base".into(),
            mode: 0o700,
            root: Root::Pgdata,
        },
        Entry::Link {
            path: "pg_wal".into(),
            target: "/wal".into(),
        },
        Entry::File(FileEntry {
            path: "base/1/1259".into(),
            root: Root::Pgdata,
            mode: 0o600,
            size: 3,
            mtime: 1,
            blocks: vec![],
            packed: Some(Packed {
                chunk: id,
                offset: 5,
                hash: id,
            }),
        }),
    ];
    let json = serde_json::to_string(&entries).unwrap();
    assert!(json.contains(r#""type":"dir""#), "{json}");
    let back: Vec<Entry> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, entries);
}

fn manifest_with(entries: Vec<Entry>) -> Manifest {
    testing::ManifestBuilder::new("L")
        .block_size(8192)
        .tablespace(16384, "ts", "/ts")
        .entries(entries)
        .build()
}

fn file(path: &str, root: Root) -> Entry {
    Entry::File(FileEntry {
        path: path.into(),
        root,
        mode: 0o600,
        size: 0,
        mtime: 0,
        blocks: Vec::new(),
        packed: None,
    })
}

fn link(path: &str, target: &str) -> Entry {
    Entry::Link {
        path: path.into(),
        target: target.into(),
    }
}

#[test]
fn manifest_rules() {
    let good = manifest_with(vec![
        link("pg_wal", "/wal"),
        Entry::Dir {
            path: "pg_wal/archive_status".into(),
            mode: 0o700,
            root: Root::Pgdata,
        },
        link("postgresql.conf", "/etc/pg.conf"),
        file("PG_VERSION", Root::Pgdata),
        file("pg_tblspc/16384/PG_15/1/2", Root::Pgdata),
        file("etc/postgresql/pg_hba.conf", Root::Config),
    ]);
    assert_eq!(good.check_rules(), Vec::<String>::new());
    for (bad, word) in [
        (
            vec![link("postgresql.auto.conf", "/x")],
            "postgresql.auto.conf",
        ),
        (vec![link("recovery.signal", "/x")], "recovery.signal"),
        (vec![link("standby.signal", "/x")], "standby.signal"),
        (vec![link("backup_label", "/x")], "backup_label"),
        (vec![link("tablespace_map", "/x")], "tablespace_map"),
        (vec![link("pg_tblspc/16384", "/x")], "pg_tblspc"),
        (vec![link("restored_config", "/x")], "restored_config"),
        (
            vec![link("evil", "/x"), file("evil/f", Root::Pgdata)],
            "evil/f",
        ),
        (
            vec![link("hop", "/x"), link("hop/inner", "/y")],
            "hop/inner",
        ),
        (
            vec![file("a", Root::Pgdata), file("a", Root::Pgdata)],
            "twice",
        ),
        (vec![file("../a", Root::Pgdata)], "../a"),
        (vec![file("/etc/passwd", Root::Config)], "/etc/passwd"),
        (
            vec![file("pg_tblspc/9/x", Root::Pgdata)],
            "unknown tablespace",
        ),
    ] {
        let problems = manifest_with(bad.clone()).check_rules();
        assert!(
            problems.iter().any(|p| p.contains(word)),
            "{bad:?}: {problems:?}"
        );
    }
}

#[tokio::test]
async fn one_listing_and_the_256_directories_find_the_same_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = crate::test_repository(dir.path(), None).await;
    let mut stored = Vec::new();
    for i in 0..40u32 {
        let (hash, encoded) = repo.codec().encode(&i.to_le_bytes()).unwrap();
        let id = ChunkId(hash);
        repo.put_chunk(&id, Bytes::from(encoded)).await.unwrap();
        stored.push(id);
    }
    // Not a chunk: never listed as one.
    std::fs::write(dir.path().join("data/readme"), "x").unwrap();
    stored.sort();
    for expected in [0, ONE_LISTING_UP_TO + 1] {
        let mut listed: Vec<ChunkId> = repo
            .list_chunks(expected)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        listed.sort();
        assert_eq!(listed, stored, "expected {expected}");
    }
}
