//! Logical dumps in a copy: the source's dump manifests, read and verified like backup
//! manifests, and each written to the target only once every chunk it references is located
//! there (docs/FORMAT.md, "Copies"). Their chunks travel in the packs step, wanted like a
//! backup's.

use std::collections::HashMap;

use futures::StreamExt;
use lifeboat_repo::dump::DumpManifest;
use lifeboat_repo::{RepoError, keys};
use lifeboat_storage::ObjectMeta;

use super::plan::{Plan, PlanInput};
use super::transfer::{self, Check};
use super::{Damaged, NotCopied, Run};
use crate::Result;

impl Run<'_> {
    /// The source's readable dump manifests named in its listing, oldest first. A damaged one is
    /// reported as damage (and as a dump not copied, unless the target already holds it); one
    /// gone meanwhile is left out.
    pub(super) async fn dump_manifests(
        &mut self,
        source_listing: &[ObjectMeta],
        target_listing: &[ObjectMeta],
    ) -> Result<Vec<DumpManifest>> {
        let source = self.source;
        let labels: Vec<String> = source_listing
            .iter()
            .filter(|m| lifeboat_storage::validate_key(&m.key).is_ok())
            .filter_map(|m| keys::parse_dump_manifest_key(&m.key))
            .collect();
        let mut reads = futures::stream::iter(labels)
            .map(|label| async move {
                let manifest = source.dump_manifest(&label).await;
                (label, manifest)
            })
            .buffer_unordered(self.concurrency());
        let mut out = Vec::new();
        while let Some((label, result)) = reads.next().await {
            match result {
                Ok(m) => out.push(m),
                Err(e) if e.is_not_found() => {}
                Err(RepoError::Corrupt { key, reason }) => {
                    tracing::error!("source dump manifest {key} is damaged ({reason})");
                    let held = target_listing.iter().any(|m| m.key == key);
                    self.report.damaged.push(Damaged { key, reason });
                    if !held {
                        self.report.dumps_not_copied.push(NotCopied {
                            label,
                            reason: "its manifest in the source is damaged".into(),
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(out)
    }

    /// Write each planned dump's manifest, oldest first, once every chunk it references is in
    /// the target; otherwise say why not.
    pub(super) async fn copy_dumps(&mut self, plan: &Plan, input: &PlanInput) -> Result<()> {
        let by_label: HashMap<&str, &DumpManifest> = input
            .source_dumps
            .iter()
            .map(|d| (d.label.as_str(), d))
            .collect();
        for label in &plan.dumps {
            let Some(manifest) = by_label.get(label.as_str()) else {
                continue;
            };
            if let Some(missing) = self.missing_chunks(manifest.chunks()) {
                let not_copied = self.not_copied("dump", label, missing);
                self.report.dumps_not_copied.push(not_copied);
                continue;
            }
            let key = keys::dump_manifest(label);
            let fetched =
                transfer::fetch(self.source, &key, Check::DumpManifest(label.clone())).await?;
            let Some(bytes) = self.outcome(&key, fetched, &[]) else {
                self.report.dumps_not_copied.push(NotCopied {
                    label: label.clone(),
                    reason: format!(
                        "its manifest {key} could not be copied (see damaged/vanished)"
                    ),
                });
                continue;
            };
            let size = bytes.len() as u64;
            self.lock.check_held().await?;
            transfer::put(self.target, &key, bytes).await?;
            self.count(size);
            self.report.copied.dump_manifests += 1;
            self.report.dumps_copied.push(label.clone());
        }
        Ok(())
    }
}
