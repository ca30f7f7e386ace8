//! Dumps in `verify` (docs/FORMAT.md, "Dumps"): every dump manifest is read on every run (one
//! that cannot be read is a finding), the chunks it references join the backups' (located and
//! read back the same way, with the same state); then each database of a dump that has a chunk
//! missing or damaged is a finding, since `dump restore` of it would fail.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use lifeboat_repo::backup::ChunkId;
use lifeboat_repo::{RepoError, Repository, keys};

use super::report::{Counters, Finding, FindingKind};
use crate::Result;

/// The dumps a run checks: their labels, and the largest chunk they may hold.
pub(super) struct DumpSelection {
    pub(super) labels: Vec<String>,
    pub(super) max_chunk: u64,
}

/// Read every dump manifest; add its chunks to `referenced`. Unreadable ones are findings.
pub(super) async fn select(
    repo: &Repository,
    referenced: &mut HashSet<ChunkId>,
    counters: &mut Counters,
    findings: &mut Vec<Finding>,
) -> Result<DumpSelection> {
    let mut selection = DumpSelection {
        labels: Vec::new(),
        max_chunk: 0,
    };
    for (label, _) in repo.dump_labels().await? {
        match repo.dump_manifest(&label).await {
            Ok(m) => {
                counters.dumps_checked += 1;
                referenced.extend(m.chunks());
                selection.max_chunk = selection.max_chunk.max(u64::from(m.chunking.max_size));
                selection.labels.push(label);
            }
            Err(e) if e.is_not_found() => {}
            Err(RepoError::Corrupt { key, reason }) => {
                counters.dumps_checked += 1;
                counters.dumps_damaged += 1;
                findings.push(Finding {
                    kind: FindingKind::DamagedDump,
                    object: key.clone(),
                    what: format!("the manifest of dump {label} ({key}) cannot be read: {reason}"),
                    backups: Vec::new(),
                    action: format!(
                        "dump {label} cannot be restored: restore another dump (`lifeboat dump list`) and take a new one (`lifeboat dump`)"
                    ),
                    gap: None,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(selection)
}

/// One finding per database of a dump with a missing or damaged chunk (a second read of the
/// manifests, only when some chunk is missing or damaged).
pub(super) async fn findings(
    repo: &Repository,
    selection: &DumpSelection,
    missing: &BTreeSet<ChunkId>,
    damaged: &BTreeMap<ChunkId, String>,
    counters: &mut Counters,
) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    if missing.is_empty() && damaged.is_empty() {
        return Ok(out);
    }
    for label in &selection.labels {
        let m = match repo.dump_manifest(label).await {
            Ok(m) => m,
            // Expired meanwhile: not a dump any more.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let mut bad_dump = false;
        for s in m.streams() {
            let lost = s.chunks.iter().filter(|c| missing.contains(&c.id)).count();
            let bad: Vec<&ChunkId> = s
                .chunks
                .iter()
                .map(|c| &c.id)
                .filter(|id| damaged.contains_key(id))
                .collect();
            if lost == 0 && bad.is_empty() {
                continue;
            }
            bad_dump = true;
            let what = if s.name.is_empty() {
                "the globals".to_string()
            } else {
                format!("database {:?}", s.name)
            };
            let first = bad
                .first()
                .map(|id| format!("; first damaged: {id} ({})", damaged[*id]))
                .unwrap_or_default();
            out.push(Finding {
                kind: FindingKind::DamagedDump,
                object: keys::dump_manifest(label),
                what: format!(
                    "dump {label}, {what}: {lost} of its {} chunks missing, {} damaged{first}",
                    s.chunks.len(),
                    bad.len()
                ),
                backups: Vec::new(),
                action: format!(
                    "`lifeboat dump restore` of {what} from dump {label} fails: restore it from another dump (`lifeboat dump list`, --label) and take a new one (`lifeboat dump`)"
                ),
                gap: None,
            });
        }
        if bad_dump {
            counters.dumps_damaged += 1;
        }
    }
    Ok(out)
}
