#![allow(clippy::unwrap_used)]

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ha: RawHaConfig,
}

const MINIMAL: &str = r#"
[ha]
etcd = ["http://127.0.0.1:2379"]
cluster = "main"
name = "node1"
conninfo = "host=127.0.0.1 port=5432 user=replicator"
api_url = "http://127.0.0.1:7433"
"#;

fn parse(text: &str) -> Result<HaConfig, String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_string())?;
    file.ha.into_config().map_err(|e| e.to_string())
}

/// MINIMAL with `extra` lines appended to the section.
fn with(extra: &str) -> Result<HaConfig, String> {
    parse(&format!("{MINIMAL}{extra}\n"))
}

/// MINIMAL with the line starting `key =` replaced.
fn replacing(key: &str, line: &str) -> Result<HaConfig, String> {
    let text: Vec<&str> = MINIMAL
        .lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                line
            } else {
                l
            }
        })
        .collect();
    parse(&text.join("\n"))
}

#[test]
fn defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.etcd, vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.namespace, "/lifeboat");
    assert_eq!(c.cluster, "main");
    assert_eq!(c.name, "node1");
    assert_eq!(c.slot_name(), "lifeboat_ha_node1");
    assert_eq!(c.ttl, Duration::from_secs(30));
    assert_eq!(c.loop_wait, Duration::from_secs(10));
    assert_eq!(c.retry_timeout, Duration::from_secs(10));
    assert_eq!(c.maximum_lag_on_failover, 1 << 20);
    assert_eq!(c.synchronous, SyncMode::Off);
    assert_eq!(c.primary_start_timeout, Duration::from_secs(300));
}

#[test]
fn durations_sizes_and_modes() {
    let c = with(
        "ttl = \"10s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"\n\
         maximum_lag_on_failover = \"16MiB\"\nsynchronous = \"strict\"\n\
         namespace = \"/db/\"\nprimary_start_timeout = \"0s\"",
    )
    .unwrap();
    assert_eq!(
        (c.ttl, c.loop_wait, c.retry_timeout),
        (
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(4)
        )
    );
    assert_eq!(c.maximum_lag_on_failover, 16 << 20);
    assert_eq!(c.synchronous, SyncMode::Strict);
    assert_eq!(c.namespace, "/db");
    assert_eq!(c.primary_start_timeout, Duration::ZERO);
    for (text, bytes) in [
        ("\"1MB\"", 1 << 20),
        ("4096", 4096),
        ("\"512kB\"", 512 << 10),
    ] {
        let c = with(&format!("maximum_lag_on_failover = {text}")).unwrap();
        assert_eq!(c.maximum_lag_on_failover, bytes, "{text}");
    }
    assert_eq!(
        with("synchronous = \"on\"").unwrap().synchronous,
        SyncMode::On
    );
}

#[test]
fn unparsable_values_are_refused_by_the_parser() {
    for (extra, says) in [
        ("ttl = \"soon\"", "not a duration"),
        ("maximum_lag_on_failover = \"a lot\"", "not a size"),
        ("synchronous = \"yes\"", "unknown variant"),
        ("loop_time = \"1s\"", "unknown field"),
    ] {
        let e = with(extra).unwrap_err();
        assert!(e.contains(says), "{extra}: {e}");
    }
}

/// Each refusal names the key, says what is wrong, and what to write instead.
#[test]
fn refusals() {
    let cases: Vec<(Result<HaConfig, String>, &[&str])> = vec![
        (
            replacing("etcd", "etcd = []"),
            &["etcd is empty", "http://10.0.0.1:2379"],
        ),
        (replacing("etcd", "# no etcd key"), &["etcd is empty"]),
        (
            replacing("etcd", "etcd = [\"127.0.0.1:2379\"]"),
            &["\"127.0.0.1:2379\" is not an etcd client URL", "scheme"],
        ),
        (
            replacing("etcd", "etcd = [\"http://a:2379\", \"https://\"]"),
            &["\"https://\" is not an etcd client URL"],
        ),
        (
            replacing("cluster", "cluster = \"\""),
            &["cluster = \"\" is empty", "lowercase letters"],
        ),
        (
            replacing("name", "name = \"Node-1\""),
            &["name = \"Node-1\" contains 'N'", "lifeboat_ha_<name>"],
        ),
        (
            replacing("name", &format!("name = \"{}\"", "n".repeat(51))),
            &["51 characters long (at most 50)"],
        ),
        (
            replacing("cluster", "cluster = \"prod db\""),
            &["contains ' '"],
        ),
        (
            replacing("conninfo", "conninfo = \" \""),
            &["conninfo is empty", "user=replicator"],
        ),
        (
            replacing("api_url", "api_url = \"\""),
            &["api_url is empty", "lifeboat ha status"],
        ),
        (
            with("namespace = \"lifeboat\""),
            &["namespace = \"lifeboat\" is not a key prefix"],
        ),
        (
            with("ttl = \"1s\"\nloop_wait = \"1s\"\nretry_timeout = \"1s\""),
            &["ttl = \"1s\" is too short: set it to at least 2s"],
        ),
        (
            with("loop_wait = \"500ms\""),
            &["loop_wait = \"500ms\" is too short: set it to at least 1s"],
        ),
        (
            with("retry_timeout = \"0s\""),
            &["retry_timeout = \"0s\" is too short"],
        ),
        (
            with("ttl = \"20s\""),
            &[
                "ttl = \"20s\" is too short for loop_wait = \"10s\" and retry_timeout = \"10s\"",
                "loop_wait + 2 * retry_timeout <= ttl (here 30s > 20s)",
                "set ttl to at least \"30s\"",
            ],
        ),
        (
            with("ttl = \"10s\"\nloop_wait = \"3s\"\nretry_timeout = \"4s\""),
            &["(here 11s > 10s)", "at least \"11s\""],
        ),
    ];
    for (result, says) in cases {
        let e = result.unwrap_err();
        assert!(e.starts_with("[ha] "), "{e}");
        for s in says {
            assert!(e.contains(s), "expected {s:?} in: {e}");
        }
    }
}

#[test]
fn the_smallest_ttl_that_works_is_accepted() {
    let c = with("ttl = \"10s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"").unwrap();
    assert_eq!(c.ttl, c.loop_wait + 2 * c.retry_timeout);
    assert!(with("ttl = \"2s\"\nloop_wait = \"1s\"\nretry_timeout = \"1s\"").is_err());
    let names = with("").unwrap();
    let mut long = names.clone();
    long.name = "a_1".repeat(16) + "xy";
    assert_eq!(long.name.len(), MAX_NAME_LEN);
    assert!(long.validate().is_ok());
}

#[test]
fn error_key_names_the_offending_key() {
    let raw = RawHaConfig {
        etcd: vec!["http://x:2379".into()],
        cluster: "main".into(),
        name: "n1".into(),
        conninfo: "host=x".into(),
        api_url: "http://x:7433".into(),
        ttl: Some(Duration::from_secs(5)),
        ..RawHaConfig::default()
    };
    assert_eq!(raw.into_config().unwrap_err().key, "ttl");
}
