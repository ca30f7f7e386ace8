//! `dump list`: the dumps in the repository, oldest first, with their databases, sizes, the bytes
//! each run stored and how much it shared with what was already there (dedup).

use lifeboat_repo::{RepoError, Repository};
use serde::Serialize;

use crate::Result;

#[derive(Debug, Clone, Serialize)]
pub struct DumpEntry {
    pub label: String,
    pub start_time: String,
    pub stop_time: String,
    pub duration_seconds: f64,
    pub server_version_num: u32,
    pub databases: Vec<DatabaseEntry>,
    /// Bytes of every stream (globals included).
    pub size: u64,
    /// Bytes the run added to the repository.
    pub stored_size: u64,
    /// `size / stored_size`: how many times smaller the run's addition was than what it dumped.
    pub dedup_ratio: f64,
    /// Set when the manifest cannot be read; the other fields are then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseEntry {
    pub name: String,
    pub size: u64,
    pub stored_size: u64,
    pub chunks: u64,
    pub pg_dump: String,
}

pub async fn list(repo: &Repository) -> Result<Vec<DumpEntry>> {
    let mut out = Vec::new();
    for (label, _) in repo.dump_labels().await? {
        let entry = match repo.dump_manifest(&label).await {
            Ok(m) => DumpEntry {
                label,
                start_time: lifeboat_repo::timestamp::text(m.start_time),
                stop_time: lifeboat_repo::timestamp::text(m.stop_time),
                duration_seconds: m.duration_seconds,
                server_version_num: m.server_version_num,
                databases: m
                    .databases
                    .iter()
                    .map(|d| DatabaseEntry {
                        name: d.name.clone(),
                        size: d.size,
                        stored_size: d.stored_size,
                        chunks: d.chunks.len() as u64,
                        pg_dump: d.program_version.clone(),
                    })
                    .collect(),
                size: m.size,
                stored_size: m.stored_size,
                dedup_ratio: m.size as f64 / (m.stored_size.max(1)) as f64,
                problem: None,
            },
            Err(e) if e.is_not_found() => continue,
            Err(e @ RepoError::Corrupt { .. }) => DumpEntry {
                label,
                start_time: String::new(),
                stop_time: String::new(),
                duration_seconds: 0.0,
                server_version_num: 0,
                databases: Vec::new(),
                size: 0,
                stored_size: 0,
                dedup_ratio: 0.0,
                problem: Some(e.to_string()),
            },
            Err(e) => return Err(e.into()),
        };
        out.push(entry);
    }
    Ok(out)
}
