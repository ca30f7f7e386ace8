//! `lifeboat upgrade` on a version 1 repository (a copy of the fixture
//! `tests/fixtures/verify-repo/`, loose chunks only): it raises both config copies to version 2,
//! says so, does nothing the second time, and the repository still verifies and restores.

use crate::old_format::{restore_and_start, rows_of_big};
use crate::support::fixture::FixtureRepo;
use crate::support::*;

fn config_version(fixture: &FixtureRepo, key: &str) -> u64 {
    let text = std::fs::read_to_string(fixture.object(key)).expect("read the config");
    let config: serde_json::Value = serde_json::from_str(&text).expect("config JSON");
    config["version"].as_u64().expect("a version")
}

#[test]
fn upgrade_raises_the_fixture_to_version_2_once_and_it_still_restores() {
    let fixture = FixtureRepo::new("");
    for key in ["lifeboat.json", "lifeboat.json.copy"] {
        assert_eq!(config_version(&fixture, key), 1, "the fixture is version 1");
    }

    let out = fixture.run(&["upgrade"]);
    assert_success(&out, "lifeboat upgrade");
    let said = text(&out);
    assert!(
        said.contains("from format version 1 to 2") && said.contains("packs"),
        "{said}"
    );
    for key in ["lifeboat.json", "lifeboat.json.copy"] {
        assert_eq!(config_version(&fixture, key), 2, "{key} after upgrade");
    }
    // No lock is left behind.
    assert!(
        std::fs::read_dir(fixture.object("locks")).map_or(true, |mut d| d.next().is_none()),
        "a lock is left"
    );

    let again = fixture.run(&["upgrade"]);
    assert_success(&again, "a second lifeboat upgrade");
    assert!(text(&again).contains("already"), "{}", text(&again));

    let info = json_of(&fixture.run(&["info", "--json"]), "lifeboat info --json");
    assert_eq!(info["format_version"], 2, "{info}");

    fixture.verify(&[], 0);
    let listing = json_of(&fixture.run(&["list", "--json"]), "lifeboat list --json");
    let label = listing["backups"][0]["label"]
        .as_str()
        .unwrap_or_else(|| panic!("no backup listed: {listing}"))
        .to_string();
    let copy = restore_and_start(&fixture.config, &label, &["--target", "immediate"]);
    assert_eq!(
        rows_of_big(&copy),
        8000,
        "backup {label} restored to its end"
    );
}
