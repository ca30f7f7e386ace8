//! The streamed-WAL section: the receiver the daemon runs, and what the server says of it (its
//! walsender and slot). Absent without `[stream]`.

use std::fmt::Write as _;

use super::format::{bytes, duration, esc, when};
use crate::status::Snapshot;

pub(super) fn stream(out: &mut String, s: &Snapshot, now: Option<f64>) {
    let Some(st) = &s.stream else {
        return;
    };
    out.push_str("<section id=\"stream\"><h2>Streamed WAL</h2><p>");
    let mut facts = Vec::new();
    let state = match (st.streaming, st.state.as_deref()) {
        (Some(true), _) => "<b>streaming</b>".to_string(),
        (Some(false), Some(state)) => {
            format!(
                "<span class=\"bad-text\">not streaming ({})</span>",
                esc(state)
            )
        }
        (Some(false), None) => "<span class=\"bad-text\">not connected</span>".to_string(),
        (None, _) => "<span class=\"muted\">server status unknown</span>".to_string(),
    };
    facts.push(format!(
        "slot <span class=\"mono\">{}</span>: {state}{}",
        esc(&st.slot),
        st.down_since
            .as_deref()
            .map(|t| format!(" since {}", when(t, now)))
            .unwrap_or_default()
    ));
    if let Some(lag) = st.lag_bytes {
        facts.push(format!("lag <b>{}</b>", bytes(lag)));
    }
    if let Some(age) = st.reply_age_seconds {
        facts.push(format!("last reply {} ago", duration(age)));
    }
    if let Some(sync) = &st.sync_state {
        facts.push(esc(sync));
    }
    if let Some(retained) = st.retained_bytes {
        facts.push(format!(
            "slot keeps <b>{}</b> on the server",
            bytes(retained)
        ));
    }
    if let Some(w) = &st.wal_status {
        let class = if w == "lost" || w == "unreserved" {
            "bad-text"
        } else {
            ""
        };
        facts.push(format!(
            "wal_status <span class=\"{class}\">{}</span>",
            esc(w)
        ));
    }
    if st.slot_exists == Some(false) {
        facts.push("<span class=\"bad-text\">the slot does not exist</span>".to_string());
    }
    let r = &st.receiver;
    facts.push(match r.pid {
        Some(pid) => format!("receiver pid {pid}, started {} times", r.starts),
        None => format!(
            "<span class=\"bad-text\">receiver not running</span>{}",
            r.restart_at
                .as_deref()
                .map(|t| format!(", next start {}", when(t, now)))
                .unwrap_or_default()
        ),
    });
    out.push_str(&facts.join(" · "));
    out.push_str("</p>");
    if let Some(e) = &r.last_error {
        let _ = write!(
            out,
            "<p class=\"muted\">Receiver's last message: <span class=\"mono\">{}</span></p>",
            esc(e)
        );
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use crate::status::{ReceiverProcess, Snapshot, StreamStatus};

    fn snapshot(stream: Option<StreamStatus>) -> Snapshot {
        Snapshot {
            generated_at: Some("2026-01-02T11:00:00Z".into()),
            stream,
            ..crate::samples::snapshot()
        }
    }

    #[test]
    fn section_and_series_only_with_a_receiver_and_unknown_values_left_out() {
        let none = snapshot(None);
        assert!(!crate::dashboard::render(&none).contains("id=\"stream\""));
        assert!(!crate::metrics::render(&none).contains("lifeboat_stream_"));

        let down = snapshot(Some(StreamStatus {
            slot: "lifeboat".into(),
            streaming: Some(false),
            slot_exists: Some(true),
            retained_bytes: Some(3 << 20),
            wal_status: Some("lost".into()),
            receiver: ReceiverProcess {
                starts: 3,
                last_error: Some("<script>no pg_hba.conf entry</script>".into()),
                ..ReceiverProcess::default()
            },
            ..StreamStatus::default()
        }));
        let page = crate::dashboard::render(&down);
        assert!(page.contains("not connected"), "{page}");
        assert!(page.contains("receiver not running"), "{page}");
        assert!(
            page.contains("&lt;script&gt;no pg_hba.conf entry"),
            "{page}"
        );
        let metrics = crate::metrics::render(&down);
        for line in [
            "lifeboat_stream_up 0",
            "lifeboat_slot_lost 1",
            "lifeboat_slot_retained_bytes 3145728",
            "lifeboat_stream_receiver_starts_total 3",
        ] {
            assert!(metrics.contains(line), "{line}:\n{metrics}");
        }
        // No walsender: no lag is known, and none is made up.
        assert!(!metrics.contains("lifeboat_stream_lag_bytes "), "{metrics}");
    }
}
