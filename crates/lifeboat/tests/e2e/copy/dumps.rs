//! Logical dumps in a copy: a dump copied to the S3 test server restores a table from the copy
//! alone (rows equal), and a second copy after a second dump transfers exactly that dump's new
//! objects (its packs and manifest), nothing of the backup again.

use std::time::Instant;

use lifeboat_testkit::cluster::TestCluster;
use serde_json::Value;

use super::{Copies, n, objects};
use crate::support::fixture::flip_byte;
use crate::support::*;

fn dump(c: &Copies, cluster: &TestCluster) -> Value {
    let out = c.setup.run(&[
        "dump",
        "--db",
        "postgres",
        "--from",
        &cluster.conninfo(),
        "--json",
    ]);
    json_of(&out, "lifeboat dump")
}

fn rows(cluster: &TestCluster) -> String {
    cluster
        .psql("select * from t order by 1")
        .unwrap_or_else(|e| panic!("read t: {e:#}"))
}

#[test]
fn a_copied_dump_restores_from_the_copy_and_a_second_run_copies_only_the_new_dump() {
    let began = Instant::now();
    let c = Copies::new(true);
    let source = TestCluster::start_new(&c.setup.archive_conf()).expect("cluster");
    source
        .psql("create table t as select g as id, md5(g::text) as pad from generate_series(1, 20000) g")
        .expect("table t");
    let backup = c.setup.backup(&source);
    let first = dump(&c, &source);
    let rows_then = rows(&source);

    let r1 = c.copy();
    assert_eq!(r1["ok"], true, "{r1}");
    assert_eq!(n(&r1, &["copied", "manifests"]), 1, "{r1}");
    assert_eq!(n(&r1, &["copied", "dump_manifests"]), 1, "{r1}");
    assert_eq!(r1["dumps_copied"][0], first["label"], "{r1}");
    assert_eq!(n(&r1, &["lag", "dumps"]), 0, "{r1}");
    assert_eq!(
        c.copy_labels(),
        vec![backup["label"].as_str().expect("label")]
    );

    // The table restores from the copy alone, into a fresh server: the rows it had.
    let target = TestCluster::start_new("").expect("target cluster");
    let out = c.on_copy(&[
        "dump",
        "restore",
        "--db",
        "postgres",
        "--table",
        "t",
        "--to",
        &target.conninfo(),
        "--json",
    ]);
    let restored = json_of(&out, "dump restore from the copy");
    assert_eq!(restored["label"], first["label"], "{restored}");
    assert_eq!(rows(&target), rows_then);

    // A small change and a second dump: the next copy takes exactly its new objects.
    let before = objects(c.source_dir());
    source
        .psql("update t set pad = 'changed' where id in (5, 15000); insert into t values (20001, 'new')")
        .expect("a small change");
    let second = dump(&c, &source);
    let after = objects(c.source_dir());
    let new: Vec<(&String, &u64)> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .filter(|(k, _)| !k.starts_with("locks/") && !k.starts_with("index/"))
        .collect();
    let count = |prefix: &str| new.iter().filter(|(k, _)| k.starts_with(prefix)).count() as u64;
    assert_eq!(count("dumps/"), 1, "{new:?}");
    let r2 = c.copy();
    assert_eq!(r2["ok"], true, "{r2}");
    assert_eq!(
        r2["dumps_copied"],
        serde_json::json!([second["label"]]),
        "{r2}"
    );
    assert_eq!(n(&r2, &["copied", "dump_manifests"]), 1, "{r2}");
    assert_eq!(n(&r2, &["copied", "manifests"]), 0, "{r2}");
    assert_eq!(n(&r2, &["copied", "packs"]), count("packs/"), "{r2}");
    assert_eq!(
        n(&r2, &["copied", "bytes"]),
        new.iter().map(|(_, s)| **s).sum::<u64>(),
        "exactly the second dump's objects: {r2}"
    );
    assert!(
        n(&r2, &["copied", "bytes"]) * 5 < n(&r1, &["copied", "bytes"]),
        "the second dump's objects are a small part of the first copy: {r2}"
    );
    eprintln!(
        "first copy {} bytes, second {} bytes ({} packs); whole test {:.1} s",
        n(&r1, &["copied", "bytes"]),
        n(&r2, &["copied", "bytes"]),
        n(&r2, &["copied", "packs"]),
        began.elapsed().as_secs_f64()
    );
    let listed = json_of(
        &c.on_copy(&["dump", "list", "--json"]),
        "dump list on the copy",
    );
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    c.verify_copy_clean("with two dumps");
}

/// A damaged dump manifest in the source, then a damaged pack holding a dump's chunks: each is
/// reported (exit 6, the key named), the dump is not copied, the backup is.
#[test]
fn a_damaged_dump_manifest_or_chunk_is_reported_and_the_dump_not_copied() {
    let c = Copies::new(false);
    let source = TestCluster::start_new(&c.setup.archive_conf()).expect("cluster");
    source
        .psql(
            "create table t as select g as id, md5(g::text) as pad from generate_series(1, 5000) g",
        )
        .expect("table t");
    let backup = c.setup.backup(&source);
    let before = objects(c.source_dir());
    let d = dump(&c, &source);
    let label = d["label"].as_str().expect("label");
    let manifest = c.source_dir().join(format!("dumps/{label}/manifest"));
    let dump_pack = objects(c.source_dir())
        .into_keys()
        .find(|k| k.starts_with("packs/") && !before.contains_key(k))
        .expect("the dump stored a pack");

    let copy_exit_6 = |what: &str| -> Value {
        let out = c.copy_cmd().output().expect("copy");
        assert_code(&out, 6, what);
        serde_json::from_slice(&out.stdout).expect("copy JSON report")
    };
    // Its manifest damaged: reported, not copied; the backup is.
    flip_byte(&manifest, 20);
    let r = copy_exit_6("copy with a damaged dump manifest");
    assert_eq!(
        r["damaged"][0]["key"],
        format!("dumps/{label}/manifest"),
        "{r}"
    );
    assert_eq!(r["dumps_not_copied"][0]["label"], label, "{r}");
    assert_eq!(r["backups_copied"][0], backup["label"], "{r}");
    assert_eq!(n(&r, &["lag", "dumps"]), 1, "{r}");
    flip_byte(&manifest, 20);

    // A pack holding its chunks damaged: the pack and the dump are reported, neither copied.
    flip_byte(&c.source_dir().join(&dump_pack), 100);
    let r = copy_exit_6("copy with a damaged pack of a dump");
    assert_eq!(r["damaged"][0]["key"], dump_pack.as_str(), "{r}");
    assert_eq!(r["dumps_not_copied"][0]["label"], label, "{r}");
    assert_eq!(n(&r, &["copied", "dump_manifests"]), 0, "{r}");
    let listed = json_of(
        &c.on_copy(&["dump", "list", "--json"]),
        "dump list on the copy",
    );
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert!(!c.setup.dir.path().join("copy").join(&dump_pack).exists());
    c.verify_copy_clean("after copies that met damaged dumps");
}
