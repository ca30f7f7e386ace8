//! Password authentication (SCRAM-SHA-256, MD5, cleartext) and the refusals operators meet.

#![allow(clippy::unwrap_used)]

use std::fs;

use super::*;

/// Makes a role and puts a pg_hba.conf line for it before initdb's trust lines.
fn add_role(cluster: &LocalCluster, role: &str, encryption: &str, method: &str) {
    cluster
        .psql(&format!(
            "set password_encryption = '{encryption}'; \
             create role {role} login replication password 'sekrit-{role}'"
        ))
        .unwrap();
    let hba = cluster.datadir.join("pg_hba.conf");
    let old = fs::read_to_string(&hba).unwrap();
    fs::write(
        &hba,
        format!("host replication {role} 127.0.0.1/32 {method}\n{old}"),
    )
    .unwrap();
    cluster.psql("select pg_reload_conf()").unwrap();
}

#[tokio::test]
async fn password_authentication() {
    let scratch = Scratch::start("");
    let cluster = &scratch.cluster;
    add_role(cluster, "rep_scram", "scram-sha-256", "scram-sha-256");
    add_role(cluster, "rep_md5", "md5", "md5");
    add_role(cluster, "rep_plain", "scram-sha-256", "password");
    cluster.psql("create role norep login").unwrap();
    let spec = |user: &str, password: Option<&str>| {
        let password = password
            .map(|p| format!(" password={p}"))
            .unwrap_or_default();
        ConnSpec::with_env(
            Some(&format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres{password}",
                cluster.port
            )),
            &|_| None,
        )
        .unwrap()
    };

    for user in ["rep_scram", "rep_md5", "rep_plain"] {
        let password = format!("sekrit-{user}");
        let mut conn = ReplicationConnection::connect(&spec(user, Some(&password)), "t", TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        conn.identify_system().await.unwrap();

        let err = ReplicationConnection::connect(&spec(user, Some("wrong")), "t", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.is_wrong_password(), "{user}: {err}");
        let text = err.to_string();
        assert!(text.contains("check the password"), "{text}");
        assert!(
            !text.contains("wrong") && !format!("{err:?}").contains("wrong"),
            "{text}"
        );

        let err = ReplicationConnection::connect(&spec(user, None), "t", TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("PGPASSWORD"), "{err}");
    }

    // A role without REPLICATION (trusted by initdb's lines).
    let err = ReplicationConnection::connect(&spec("norep", None), "t", TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("REPLICATION attribute"), "{err}");

    // No pg_hba.conf line: replace them all by one that does not cover replication.
    fs::write(
        cluster.datadir.join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    cluster.psql("select pg_reload_conf()").unwrap();
    let err = ReplicationConnection::connect(&spec("rep_scram", None), "t", TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`replication`"), "{err}");
    let _ = &scratch.dir;
}
