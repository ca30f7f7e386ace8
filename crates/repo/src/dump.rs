//! Logical dumps (docs/FORMAT.md, "Dumps"): the manifest of one `lifeboat dump` run, which lists
//! per database the ordered chunks of `pg_dump`'s output, and its key `dumps/<label>/manifest`.
//! The chunks are ordinary chunks (content-addressed, in packs named by indexes, the same codec),
//! so dumps and backups share them; the manifest is written last, create-only: a dump exists
//! exactly when its manifest does.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::backup::ChunkId;
use crate::{RepoError, Repository, Result, keys};

pub const DUMP_FORMAT: &str = "lifeboat-dump-manifest";
pub const DUMP_VERSION: u32 = 1;

/// One dump run: the globals and every database dumped, each a stream cut into chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpManifest {
    pub format: String,
    pub version: u32,
    pub label: String,
    /// `server_version_num` of the server dumped.
    pub server_version_num: u32,
    #[serde(with = "crate::timestamp")]
    pub start_time: OffsetDateTime,
    #[serde(with = "crate::timestamp")]
    pub stop_time: OffsetDateTime,
    pub duration_seconds: f64,
    /// How the streams were cut (content-defined chunking).
    pub chunking: Chunking,
    /// `pg_dumpall --globals-only` (roles, tablespaces): plain SQL.
    pub globals: DumpStream,
    pub databases: Vec<DumpStream>,
    /// Bytes of all streams.
    pub size: u64,
    /// Encoded bytes of the chunks this run added (packs written; chunks already stored are not
    /// counted again).
    pub stored_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// `fastcdc-v2020`.
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

/// One program's output: `pg_dump -Fc` of a database, or the globals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpStream {
    /// The database (`""` for the globals).
    pub name: String,
    /// `custom` (pg_dump -Fc, for pg_restore) or `sql` (the globals, for psql).
    pub format: String,
    /// `pg_dump --version` / `pg_dumpall --version`, as it printed it.
    pub program_version: String,
    pub server_major: u32,
    #[serde(with = "crate::timestamp")]
    pub start_time: OffsetDateTime,
    #[serde(with = "crate::timestamp")]
    pub stop_time: OffsetDateTime,
    /// Bytes of the stream (the sum of the chunks' lengths).
    pub size: u64,
    /// Encoded bytes of the chunks this stream added to the repository.
    pub stored_size: u64,
    /// The stream, in order.
    pub chunks: Vec<DumpChunk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpChunk {
    pub id: ChunkId,
    /// Plaintext length.
    pub len: u32,
}

impl DumpManifest {
    /// Every stream: the globals first, then the databases in order.
    pub fn streams(&self) -> impl Iterator<Item = &DumpStream> {
        std::iter::once(&self.globals).chain(self.databases.iter())
    }

    /// Every chunk the dump references (with repeats).
    pub fn chunks(&self) -> impl Iterator<Item = ChunkId> + '_ {
        self.streams().flat_map(|s| s.chunks.iter().map(|c| c.id))
    }

    pub fn distinct_chunks(&self) -> HashSet<ChunkId> {
        self.chunks().collect()
    }

    pub fn database(&self, name: &str) -> Option<&DumpStream> {
        self.databases.iter().find(|d| d.name == name)
    }

    /// The rules a reader relies on: the format, the label it is stored under, and each stream's
    /// size equal to the sum of its chunks.
    pub fn check(&self, label: &str) -> std::result::Result<(), String> {
        if self.format != DUMP_FORMAT || self.version != DUMP_VERSION {
            return Err(format!(
                "dump manifest format {} version {} is not supported (this lifeboat reads {DUMP_FORMAT} {DUMP_VERSION})",
                self.format, self.version
            ));
        }
        if self.label != label {
            return Err(format!("names dump {} instead", self.label));
        }
        for s in self.streams() {
            let sum: u64 = s.chunks.iter().map(|c| u64::from(c.len)).sum();
            if sum != s.size {
                return Err(format!(
                    "stream {:?}: its chunks hold {sum} bytes, its size says {}",
                    s.name, s.size
                ));
            }
        }
        Ok(())
    }
}

impl Repository {
    /// Store a finished dump's manifest, create-only: the moment the dump starts to exist.
    /// Returns the encoded size.
    pub async fn put_dump_manifest(&self, manifest: &DumpManifest) -> Result<u64> {
        let json = serde_json::to_vec(manifest)
            .map_err(|e| RepoError::Invalid(format!("cannot serialise a dump manifest: {e}")))?;
        self.put_manifest_object(&keys::dump_manifest(&manifest.label), &json, || {
            format!("a dump labelled {} already exists", manifest.label)
        })
        .await
    }

    /// Read and check one dump's manifest.
    pub async fn dump_manifest(&self, label: &str) -> Result<DumpManifest> {
        let key = keys::dump_manifest(label);
        let (_, plain) = self.get_object(&key).await?;
        let manifest: DumpManifest =
            serde_json::from_slice(&plain).map_err(|e| RepoError::Corrupt {
                key: key.clone(),
                reason: format!("not a dump manifest: {e}"),
            })?;
        manifest
            .check(label)
            .map_err(|reason| RepoError::Corrupt { key, reason })?;
        Ok(manifest)
    }

    /// Labels of the complete dumps (those with a manifest), sorted (labels are UTC start times,
    /// so this is oldest first), with the stored size of each manifest.
    pub async fn dump_labels(&self) -> Result<Vec<(String, u64)>> {
        let mut labels: Vec<(String, u64)> = self
            .store()
            .list(keys::DUMP_PREFIX)
            .await?
            .into_iter()
            .filter(|o| lifeboat_storage::validate_key(&o.key).is_ok())
            .filter_map(|o| keys::parse_dump_manifest_key(&o.key).map(|l| (l, o.size)))
            .collect();
        labels.sort();
        Ok(labels)
    }

    /// Every dump manifest, oldest first; one that cannot be read fails the call (a caller that
    /// deletes chunks must know every reference).
    pub async fn dump_manifests(&self) -> Result<Vec<DumpManifest>> {
        let mut out = Vec::new();
        for (label, _) in self.dump_labels().await? {
            match self.dump_manifest(&label).await {
                Ok(m) => out.push(m),
                // Expired since the listing.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentHash;

    fn stream(name: &str, lens: &[u32]) -> DumpStream {
        DumpStream {
            name: name.into(),
            format: "custom".into(),
            program_version: "pg_dump (PostgreSQL) 15.10".into(),
            server_major: 15,
            start_time: OffsetDateTime::UNIX_EPOCH,
            stop_time: OffsetDateTime::UNIX_EPOCH,
            size: lens.iter().map(|&l| u64::from(l)).sum(),
            stored_size: 0,
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &len)| DumpChunk {
                    id: ChunkId(ContentHash([i as u8; 32])),
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn manifests_round_trip_and_check_their_sizes() {
        let mut m = DumpManifest {
            format: DUMP_FORMAT.into(),
            version: DUMP_VERSION,
            label: "20261207T101500Z".into(),
            server_version_num: 150010,
            start_time: OffsetDateTime::UNIX_EPOCH,
            stop_time: OffsetDateTime::UNIX_EPOCH,
            duration_seconds: 1.0,
            chunking: Chunking {
                algorithm: "fastcdc-v2020".into(),
                min_size: 1,
                avg_size: 2,
                max_size: 3,
            },
            globals: stream("", &[10]),
            databases: vec![stream("app", &[5, 7])],
            size: 22,
            stored_size: 0,
        };
        let json = serde_json::to_vec(&m).expect("serialises");
        let back: DumpManifest = serde_json::from_slice(&json).expect("parses");
        assert_eq!(back.check(&m.label), Ok(()));
        assert_eq!(back.chunks().count(), 3);
        assert_eq!(back.distinct_chunks().len(), 2, "ids repeat across streams");
        assert!(back.check("other").is_err());
        m.databases[0].size = 13;
        assert!(m.check(&m.label).is_err());
    }
}
