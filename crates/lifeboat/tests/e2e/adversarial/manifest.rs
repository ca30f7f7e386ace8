//! Adversarial tests: manifest.
//!
//! In an unencrypted repository a manifest is not authenticated: anyone who can write to the store
//! can rewrite it. A crafted manifest must never make `restore` write outside its target, and
//! `verify` must report it (issue 13, defect 2).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use lifeboat_testkit::cluster::{TestCluster, TestDir, chown_to_owner};
use serde_json::{Value, json};

use crate::support::*;

/// A source cluster with one backup in an unencrypted local repository.
pub(crate) struct Backed {
    pub setup: Setup,
    pub _source: TestCluster,
    pub label: String,
}

impl Backed {
    pub fn new() -> Self {
        let setup = Setup::new(Backend::Local, false);
        let source = TestCluster::start_new(&setup.archive_conf()).expect("cluster");
        source
            .psql("create table t(x int); insert into t select generate_series(1, 1000)")
            .expect("table");
        let label = setup.backup(&source)["label"]
            .as_str()
            .expect("label")
            .to_string();
        let last = source.switch_wal().expect("switch WAL");
        source.wait_archived(&last, WAIT).expect("archived");
        Self {
            setup,
            _source: source,
            label,
        }
    }

    pub fn repo(&self) -> &Path {
        self.setup.repo_dir.as_deref().expect("local repository")
    }

    fn manifest_path(&self) -> PathBuf {
        self.repo().join(lifeboat_repo::keys::manifest(&self.label))
    }

    fn codec() -> lifeboat_repo::Codec {
        lifeboat_repo::Codec::new(lifeboat_repo::CompressionSettings::default(), None)
    }

    /// The manifest as JSON (the object decoded as docs/FORMAT.md describes).
    pub fn manifest(&self) -> Value {
        let raw = fs::read(self.manifest_path()).expect("read the manifest object");
        let (_, plain) = Self::codec().decode(&raw).expect("decode the manifest");
        serde_json::from_slice(&plain).expect("manifest JSON")
    }

    /// Replace the manifest object with `manifest`, encoded as lifeboat writes it.
    pub fn write_manifest(&self, manifest: &Value) {
        let (_, object) = Self::codec()
            .encode(&serde_json::to_vec(manifest).expect("JSON"))
            .expect("encode");
        fs::write(self.manifest_path(), object).expect("write the tampered manifest");
    }

    /// `lifeboat restore --target-dir DIR ARGS...`.
    pub fn restore(&self, dir: &Path, args: &[&str]) -> Output {
        self.setup
            .cmd()
            .arg("restore")
            .arg("--target-dir")
            .arg(dir)
            .args(args)
            .output()
            .expect("run lifeboat restore")
    }
}

/// Every file and directory under `root` with its bytes (or link target) and mtime.
pub(crate) fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, Vec<u8>, i64, i64)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (String, Vec<u8>, i64, i64)>) {
        let Ok(listing) = fs::read_dir(dir) else {
            return;
        };
        for item in listing {
            let path = item.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let (kind, bytes) = if meta.file_type().is_symlink() {
                let to = fs::read_link(&path).expect("readlink");
                (
                    "link".to_string(),
                    to.as_os_str().as_encoded_bytes().to_vec(),
                )
            } else if meta.is_dir() {
                ("dir".to_string(), Vec::new())
            } else {
                ("file".to_string(), fs::read(&path).expect("read"))
            };
            out.insert(path.clone(), (kind, bytes, meta.mtime(), meta.mtime_nsec()));
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

fn entries(m: &mut Value) -> &mut Vec<Value> {
    m["entries"].as_array_mut().expect("entries")
}

fn link(path: &str, target: &Path) -> Value {
    json!({"type": "link", "path": path, "target": target.to_str().expect("UTF-8")})
}

/// Remove the entry at `path` (any type); return it.
fn take(m: &mut Value, path: &str) -> Option<Value> {
    let list = entries(m);
    let at = list.iter().position(|e| e["path"] == path)?;
    Some(list.remove(at))
}

#[test]
fn crafted_manifest_links_never_write_outside_the_target() {
    let b = Backed::new();
    let original = b.manifest();

    // Files and a directory outside any target, writable by the user restore runs as.
    let outside = b.setup.scratch("outside");
    for name in ["auto.conf", "signal", "label", "chain"] {
        fs::write(outside.join(name), format!("precious {name}\n")).expect("outside file");
    }
    fs::create_dir_all(outside.join("dir")).expect("outside dir");
    fs::write(outside.join("dir/keep"), "precious dir file\n").expect("outside dir file");
    chown_to_owner(&outside).expect("chown");

    let pg_version = original["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["path"] == "PG_VERSION")
        .expect("PG_VERSION entry")
        .clone();

    type Craft = Box<dyn Fn(&mut Value)>;
    let o = outside.clone();
    let cases: Vec<(&str, Craft)> = vec![
        (
            "postgresql.auto.conf is a link outside",
            Box::new({
                let o = o.clone();
                move |m| {
                    take(m, "postgresql.auto.conf");
                    entries(m).push(link("postgresql.auto.conf", &o.join("auto.conf")));
                }
            }),
        ),
        (
            "recovery.signal is a link outside",
            Box::new({
                let o = o.clone();
                move |m| entries(m).push(link("recovery.signal", &o.join("signal")))
            }),
        ),
        (
            "backup_label is a link outside",
            Box::new({
                let o = o.clone();
                move |m| entries(m).push(link("backup_label", &o.join("label")))
            }),
        ),
        (
            "a link chain: postgresql.auto.conf -> hop -> outside",
            Box::new({
                let o = o.clone();
                move |m| {
                    take(m, "postgresql.auto.conf");
                    entries(m).push(link("postgresql.auto.conf", Path::new("hop")));
                    entries(m).push(link("hop", &o.join("chain")));
                }
            }),
        ),
        (
            "a link to a directory outside with a file entry under it",
            Box::new({
                let o = o.clone();
                let pg_version = pg_version.clone();
                move |m| {
                    entries(m).push(link("evil", &o.join("dir")));
                    let mut file = pg_version.clone();
                    file["path"] = Value::from("evil/keep");
                    entries(m).push(file);
                }
            }),
        ),
    ];

    for (what, craft) in cases {
        let mut m = original.clone();
        craft(&mut m);
        b.write_manifest(&m);
        let before = snapshot(&outside);
        let target = TestDir::new().expect("test dir");
        let data = target.path().join("data");

        let out = b.restore(&data, &["--backup", &b.label]);
        assert_code(&out, 4, &format!("restore of a crafted manifest ({what})"));
        assert_eq!(
            snapshot(&outside),
            before,
            "{what}: a byte outside the target changed"
        );
        let written = fs::read_dir(&data).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "{what}: nothing is written into the target");

        let out = b.setup.run(&["verify", "--backup", &b.label]);
        assert_code(&out, 6, &format!("verify of a crafted manifest ({what})"));
        let said = text(&out);
        assert!(
            said.contains(&b.label) && said.contains("manifest"),
            "{what}: verify names the manifest of {}: {said}",
            b.label
        );
    }

    // The untouched manifest restores and verifies.
    b.write_manifest(&original);
    assert_success(&b.setup.run(&["verify"]), "verify of the original manifest");
}
