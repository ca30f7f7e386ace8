//! A timeline switch: a standby made with pg_basebackup, promoted, streams its old timeline
//! up to the switch point and ends the stream with the next timeline.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use super::*;
use crate::history::TimelineHistory;

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {said}");
}

/// A standby made by pg_basebackup from the scratch cluster and started.
fn start_standby(scratch: &mut Scratch) -> LocalCluster {
    let datadir = scratch.dir.path().join("standby");
    run(scratch
        .cluster
        .command("pg_basebackup")
        .arg("-D")
        .arg(&datadir)
        .args(["-R", "-X", "stream", "-c", "fast"]));
    let standby = LocalCluster::existing(
        &datadir,
        crate::net::free_port().unwrap(),
        &scratch.cluster.socket_dir,
        scratch.cluster.owner.clone(),
    )
    .unwrap()
    .with_log_file(scratch.dir.path().join("standby.log"));
    standby.start(TIMEOUT).unwrap();
    scratch.others.push(standby.clone());
    standby
}

#[tokio::test]
async fn timeline_switch_ends_the_stream() {
    let mut scratch = Scratch::start("");
    scratch
        .cluster
        .psql("create table t as select g from generate_series(1, 1000) g")
        .unwrap();
    let standby = start_standby(&mut scratch);
    // Let the standby stream some WAL so the switch point lies inside a segment it has.
    scratch
        .cluster
        .psql("insert into t select g from generate_series(1, 1000) g")
        .unwrap();
    let target = scratch.cluster.psql("select pg_current_wal_lsn()").unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while standby
        .psql(&format!("select pg_last_wal_replay_lsn() >= '{target}'"))
        .unwrap()
        != "t"
    {
        assert!(Instant::now() < deadline, "the standby does not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run(standby
        .command("pg_ctl")
        .arg("-D")
        .arg(&standby.datadir)
        .args(["-w", "-t", "60", "promote"]));
    let spec = ConnSpec::with_env(Some(&standby.conninfo()), &|_| None).unwrap();
    let mut conn = connect(&spec).await;
    let two = TimelineId::new(2).unwrap();
    assert_eq!(conn.identify_system().await.unwrap().timeline, two);
    let (name, content) = conn.timeline_history(two).await.unwrap();
    assert_eq!(name, "00000002.history");
    let history = TimelineHistory::parse(two, std::str::from_utf8(&content).unwrap()).unwrap();
    let switch = history.switch_point_of(TimelineId::ONE).unwrap();

    // From before the switch on timeline 1: WAL up to the switch point, then the end.
    let start = if switch.segment_offset(SEG_SIZE) == 0 {
        Lsn(switch.0 - SEG_SIZE)
    } else {
        segment_start(switch)
    };
    let mut stream = conn
        .start_physical(None, start, TimelineId::ONE)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let next = loop {
        match tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            StreamMessage::XLogData {
                start: at, data, ..
            } => {
                assert_eq!(at, Lsn(start.0 + bytes.len() as u64));
                bytes.extend_from_slice(&data);
            }
            StreamMessage::Keepalive { .. } => {}
            StreamMessage::End { next_timeline } => break next_timeline,
        }
    };
    assert_eq!(next, Some((two, switch)));
    assert_eq!(Lsn(start.0 + bytes.len() as u64), switch);
    // The next call says the same; sending status after the end is harmless.
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: Some((two, switch))
        }
    );
    stream
        .send_status(switch, switch, switch, false)
        .await
        .unwrap();
    let old = segment_file(&standby, TimelineId::ONE, start);
    if let Ok(file) = fs::read(&old) {
        assert!(
            file[..bytes.len()] == bytes[..],
            "streamed bytes differ from {}",
            old.display()
        );
    }
    let (mut conn, next) = stream.finish().await.unwrap();
    assert_eq!(next, Some((two, switch)));
    let (name, again) = conn.timeline_history(two).await.unwrap();
    assert_eq!((name.as_str(), &again), ("00000002.history", &content));

    // Exactly at the switch point the server skips copy mode and answers at once.
    let mut stream = conn
        .start_physical(None, switch, TimelineId::ONE)
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap(),
        StreamMessage::End {
            next_timeline: Some((two, switch))
        }
    );
    let (mut conn, _) = stream.finish().await.unwrap();
    assert_eq!(conn.identify_system().await.unwrap().timeline, two);
}
