//! The committed verify fixture (`tests/fixtures/verify-repo/`, see `tests/fixtures/README.md`):
//! a private copy of it per test, with a config file naming it, and the readers the tests that
//! damage it share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lifeboat_pg::walname::{WalFileName, WalSegmentName};
use lifeboat_testkit::cluster::{TestDir, chown_to_owner, run_as_owner};
use serde_json::Value;

use super::{BIN, assert_code, text};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/verify-repo")
}

/// A private copy of the fixture repository, owned by the cluster owner with the modes a
/// repository has (git keeps neither), and a config file naming it.
pub struct FixtureRepo {
    pub dir: TestDir,
    pub path: PathBuf,
    pub config: PathBuf,
}

impl FixtureRepo {
    /// The copy, with `extra_config` (TOML) after the `repo` line of its config file.
    pub fn new(extra_config: &str) -> Self {
        let dir = TestDir::new().expect("test dir");
        let path = dir.path().join("repo");
        copy_tree(&fixture_dir(), &path);
        let config = dir.path().join("lifeboat.toml");
        fs::write(
            &config,
            format!("repo = \"{}\"\n{extra_config}", path.display()),
        )
        .expect("config");
        chown_to_owner(dir.path()).expect("chown");
        FixtureRepo { dir, path, config }
    }

    /// `lifeboat --config CONFIG`, as the cluster owner, with no setting from the environment.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(BIN);
        run_as_owner(&mut cmd);
        cmd.arg("--config").arg(&self.config);
        cmd.env_remove("LIFEBOAT_PASSPHRASE")
            .env_remove("LIFEBOAT_PASSPHRASE_FILE")
            .env_remove("LIFEBOAT_REPO")
            .env_remove("LIFEBOAT_LOG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run lifeboat")
    }

    /// Where the object `key` is stored.
    pub fn object(&self, key: &str) -> PathBuf {
        self.path.join(key)
    }

    /// `verify --json ARGS` on the copy: the report, after checking the exit code.
    pub fn verify(&self, args: &[&str], code: i32) -> Value {
        verify_json(|a| self.run(a), args, code)
    }
}

/// `verify --json ARGS` run by `run`: the report, after checking the exit code.
pub fn verify_json(run: impl Fn(&[&str]) -> Output, args: &[&str], code: i32) -> Value {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_code(&out, code, &format!("lifeboat {}", all.join(" ")));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify --json printed no JSON report ({e}):\n{}",
            text(&out)
        )
    })
}

/// The report's findings of kind `kind`.
pub fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings array in {report}"))
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// A copy of the tree `from` at `to`, with a repository's modes (directories 0700, files 0600).
pub fn copy_tree(from: &Path, to: &Path) {
    lifeboat_testkit::cluster::copy_tree(from, to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e:#}", from.display(), to.display()));
}

/// Every file under `repo/sub`, as repository keys, sorted.
pub fn keys_under(repo: &Path, sub: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(sub)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(repo).expect("under repo");
                out.push(key.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The last WAL segment stored in the repository at `repo`.
pub fn last_segment(repo: &Path) -> WalSegmentName {
    keys_under(repo, "wal")
        .iter()
        .filter_map(|k| k.rsplit('/').next())
        .filter_map(|n| match WalFileName::parse(n) {
            Ok(WalFileName::Segment(s)) => Some(s),
            _ => None,
        })
        .max()
        .expect("the repository holds WAL segments")
}

/// Flips one bit of the byte `at_from_end` bytes before the end of the file at `path`.
pub fn flip_byte(path: &Path, at_from_end: usize) {
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let at = bytes.len() - at_from_end;
    bytes[at] ^= 0x01;
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
