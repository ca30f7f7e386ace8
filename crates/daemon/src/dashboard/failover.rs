//! The failover section: this member's role and the agent's last decision, the leader, and every
//! member etcd lists with its role, timeline, position and lag. Absent without `[ha]`.

use std::fmt::Write as _;

use super::format::{bytes, esc, when};
use crate::status::Snapshot;

pub(super) fn failover(out: &mut String, s: &Snapshot, now: Option<f64>) {
    let Some(ha) = &s.ha else {
        return;
    };
    out.push_str("<section id=\"failover\"><h2>Failover</h2><p>");
    let mut facts = vec![format!(
        "this member <span class=\"mono\">{}</span>: <b>{}</b>",
        esc(&ha.name),
        esc(&ha.role)
    )];
    facts.push(match &ha.leader {
        Some(leader) => format!("leader <span class=\"mono\">{}</span>", esc(leader)),
        None => "<span class=\"bad-text\">no leader</span>".to_string(),
    });
    if !ha.etcd_reachable {
        facts.push("<span class=\"bad-text\">etcd does not answer</span>".to_string());
    }
    if ha.paused {
        facts.push("<b>paused</b>: no automatic failover".to_string());
    }
    if let Some(lag) = ha.lag_bytes {
        facts.push(format!("lag <b>{}</b>", bytes(lag)));
    }
    facts.push(format!("as of {}", when(&ha.observed_at, now)));
    out.push_str(&facts.join(" · "));
    let _ = write!(
        out,
        "</p><p class=\"muted\">Last decision: {}</p>",
        esc(&ha.summary)
    );
    if !ha.members.is_empty() {
        out.push_str(
            "<table><thead><tr><th>member</th><th>role</th><th>timeline</th>\
             <th>WAL position</th><th>agent</th></tr></thead><tbody>",
        );
        for m in &ha.members {
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td>{:?}</td><td>{}</td><td class=\"mono\">{}</td>\
                 <td class=\"mono\">{}</td></tr>",
                esc(&m.name),
                m.role,
                m.timeline.map(|t| t.get().to_string()).unwrap_or_default(),
                m.wal_position.map(|l| l.to_string()).unwrap_or_default(),
                esc(&m.api_url)
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>\n");
}
