//! `wal-stream`'s pieces: every run reads them all (they are few, and replaced as segments
//! fill), builds each segment's streamed prefix as a restore would and reports every piece that
//! cannot be used and every page that is not where it claims to be. The state does not record
//! them.

use std::collections::BTreeMap;

use lifeboat_repo::Repository;

use super::report::{Counters, Finding, FindingKind};
use crate::Result;
use crate::restore::tail::checked_len;

pub(super) async fn check(
    repo: &Repository,
    seg_size: u64,
    counters: &mut Counters,
) -> Result<Vec<Finding>> {
    let mut by_segment: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for piece in repo.list_stream_pieces(None).await? {
        by_segment
            .entry(piece.segment.to_string())
            .or_default()
            .push(piece);
    }
    let mut findings = Vec::new();
    for pieces in by_segment.values_mut() {
        let segment = pieces[0].segment;
        let action = "a restore to the end stops before this WAL: if the primary still has it, nothing is lost (the receiver stores the segment whole once it is complete); otherwise take a new backup now".to_string();
        // Bytes past the segment's end are no WAL of this cluster: reported, never read.
        for piece in pieces.iter().filter(|p| u64::from(p.end) > seg_size) {
            counters.streamed_pieces_damaged += 1;
            findings.push(Finding {
                kind: FindingKind::DamagedStreamedWal,
                object: piece.key(),
                what: format!(
                    "streamed WAL {} claims bytes up to {} of {segment}, past its size of {seg_size}",
                    piece.key(),
                    piece.end
                ),
                backups: Vec::new(),
                action: action.clone(),
                gap: None,
            });
        }
        pieces.retain(|p| u64::from(p.end) <= seg_size);
        if pieces.is_empty() {
            continue;
        }
        let prefix = repo.read_streamed_prefix(&segment, pieces).await?;
        counters.streamed_pieces_read += pieces.len() as u64;
        for (key, why) in &prefix.unusable {
            counters.streamed_pieces_damaged += 1;
            findings.push(Finding {
                kind: FindingKind::DamagedStreamedWal,
                object: key.clone(),
                what: format!("streamed WAL {key} of {segment} cannot be used: {why}"),
                backups: Vec::new(),
                action: action.clone(),
                gap: None,
            });
        }
        let mut wrong_pages = Vec::new();
        if !prefix.bytes.is_empty() {
            checked_len(&prefix.bytes, &segment, seg_size, &mut wrong_pages);
        }
        for why in wrong_pages {
            counters.streamed_pieces_damaged += 1;
            findings.push(Finding {
                kind: FindingKind::DamagedStreamedWal,
                object: lifeboat_repo::keys::stream_dir(&segment),
                what: why,
                backups: Vec::new(),
                action: action.clone(),
                gap: None,
            });
        }
    }
    Ok(findings)
}
