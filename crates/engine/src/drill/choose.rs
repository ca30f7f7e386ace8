//! What a drill restores: the backup (`latest`, `random` or a label) and, for a `random` target,
//! a position in the WAL after it that recovery can reach.

use lifeboat_pg::lsn::Lsn;
use lifeboat_repo::backup::Manifest;

use super::BackupChoice;

/// Pick the backup: `latest` (the newest readable), `random` (uniform; `pick(n)` returns an index
/// below `n`) or a label. The error is what to record and what to do.
pub(super) fn choose<'a>(
    manifests: &'a [Manifest],
    unreadable: &[(String, String)],
    choice: &BackupChoice,
    pick: impl FnOnce(usize) -> usize,
) -> std::result::Result<&'a Manifest, (String, String)> {
    let none = || {
        let mut why = "the repository holds no complete backup".to_string();
        if !unreadable.is_empty() {
            why.push_str(&format!(
                " that can be read ({} unreadable: {})",
                unreadable.len(),
                unreadable
                    .iter()
                    .map(|(label, problem)| format!("{label}: {problem}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        (
            why,
            "take one with `lifeboat backup`; `lifeboat verify` names damaged backups".to_string(),
        )
    };
    match choice {
        BackupChoice::Latest => manifests.last().ok_or_else(none),
        BackupChoice::Random => {
            if manifests.is_empty() {
                return Err(none());
            }
            Ok(&manifests[pick(manifests.len()).min(manifests.len() - 1)])
        }
        BackupChoice::Label(label) => {
            if let Some(m) = manifests.iter().find(|m| &m.label == label) {
                return Ok(m);
            }
            if let Some((_, problem)) = unreadable.iter().find(|(l, _)| l == label) {
                return Err((
                    format!("backup {label} is unreadable: {problem}"),
                    "run `lifeboat verify --backup LABEL` for the details; drill another backup"
                        .to_string(),
                ));
            }
            Err((
                format!("there is no complete backup labelled {label}"),
                "`lifeboat list` shows the backups; --backup also takes latest or random"
                    .to_string(),
            ))
        }
    }
}

/// A target between the backup's end (`lo`) and the start of the last archived segment of the
/// unbroken run after it (`hi`): recovery reaches any such position, since the first record at or
/// after it is archived. When the run ends in the backup's own segment, the backup's end.
pub(super) fn random_lsn(lo: Lsn, hi: Lsn, pick: impl FnOnce(u64, u64) -> u64) -> Lsn {
    if hi <= lo {
        return lo;
    }
    Lsn(pick(lo.0, hi.0).clamp(lo.0, hi.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest(label: &str) -> Manifest {
        lifeboat_repo::backup::testing::ManifestBuilder::new(label).build()
    }

    #[test]
    fn chooses_latest_random_and_label() {
        let ms = vec![manifest("a"), manifest("b"), manifest("c")];
        assert_eq!(
            choose(&ms, &[], &BackupChoice::Latest, |_| 0)
                .unwrap()
                .label,
            "c"
        );
        assert_eq!(
            choose(&ms, &[], &BackupChoice::Random, |n| n - 2)
                .unwrap()
                .label,
            "b"
        );
        assert_eq!(
            choose(&ms, &[], &BackupChoice::Label("a".into()), |_| 0)
                .unwrap()
                .label,
            "a"
        );
        let (why, _) = choose(&ms, &[], &BackupChoice::Label("zz".into()), |_| 0).unwrap_err();
        assert!(why.contains("no complete backup labelled zz"), "{why}");
        let bad = vec![("zz".to_string(), "bad tag".to_string())];
        let (why, _) = choose(&ms, &bad, &BackupChoice::Label("zz".into()), |_| 0).unwrap_err();
        assert_eq!(why, "backup zz is unreadable: bad tag");
        for choice in [BackupChoice::Latest, BackupChoice::Random] {
            let (why, _) = choose(&[], &bad, &choice, |_| 0).unwrap_err();
            assert!(
                why.contains("no complete backup") && why.contains("zz: bad tag"),
                "{why}"
            );
        }
    }

    #[test]
    fn random_lsn_stays_in_the_window() {
        assert_eq!(random_lsn(Lsn(100), Lsn(50), |_, _| 7), Lsn(100));
        assert_eq!(random_lsn(Lsn(100), Lsn(100), |_, _| 7), Lsn(100));
        assert_eq!(random_lsn(Lsn(100), Lsn(200), |lo, _| lo + 5), Lsn(105));
        assert_eq!(random_lsn(Lsn(100), Lsn(200), |_, _| 500), Lsn(200));
    }
}
