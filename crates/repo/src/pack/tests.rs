//! Unit tests of `pack`: packs and indexes written to a local repository, read back, damaged.

#![allow(clippy::unwrap_used)]

use super::*;

async fn repo(dir: &std::path::Path, encrypted: bool) -> Repository {
    crate::test_repository(dir, encrypted.then_some("pack tests")).await
}

/// `n` chunks of distinct content, encoded by the repository's codec.
fn chunks(repo: &Repository, n: usize) -> Vec<(ChunkId, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let plain: Vec<u8> = (0..1000 + i * 37).map(|b| (b * (i + 1)) as u8).collect();
            let (hash, encoded) = repo.codec().encode(&plain).unwrap();
            (ChunkId(hash), encoded)
        })
        .collect()
}

async fn sealed_pack(repo: &Repository, chunks: &[(ChunkId, Vec<u8>)]) -> SealedPack {
    let mut builder = PackBuilder::new(1 << 20).unwrap();
    for (id, encoded) in chunks {
        builder.push(*id, encoded).unwrap();
    }
    let pack = builder.seal(repo).unwrap();
    repo.put_pack(&pack).await.unwrap();
    pack
}

#[tokio::test]
async fn chunks_written_in_a_pack_read_back_through_index_and_trailer() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let repo = repo(dir.path(), encrypted).await;
        let chunks = chunks(&repo, 20);
        let pack = sealed_pack(&repo, &chunks).await;

        // The trailer alone says what the index says, read from the store or from the whole
        // pack in memory (as `copy` reads it); a pack whose footer is cut is refused by both.
        let trailer = repo.read_pack_trailer(pack.id).await.unwrap();
        assert_eq!(trailer, pack.entries);
        assert_eq!(
            repo.pack_entries(pack.id, &pack.bytes).unwrap(),
            pack.entries
        );
        let cut = &pack.bytes[..pack.bytes.len() - 1];
        let err = repo.pack_entries(pack.id, cut).unwrap_err();
        assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");
        assert!(repo.pack_entries(pack.id, &pack.bytes[..4]).is_err());

        repo.put_index(&pack.entries).await.unwrap();
        let index = repo.load_chunk_index().await.unwrap();
        assert_eq!(index.len(), 20);

        // A whole-pack read brings every chunk, each decoding to its own content.
        let located: Vec<_> = chunks
            .iter()
            .map(|(id, _)| (*id, index.locate(id).unwrap()))
            .collect();
        let reads = plan_range_reads(located, 256 << 10, 8 << 20);
        assert_eq!(reads.len(), 1, "{reads:?}");
        let fetched = repo.fetch_range(&reads[0]).await.unwrap();
        let mut buf = Vec::new();
        for (i, (id, _)) in reads[0].chunks.iter().enumerate() {
            let raw = reads[0].chunk_bytes(&fetched, i).unwrap();
            let plain = repo.decode_chunk_aligned(id, raw, &mut buf, 1).unwrap();
            assert_eq!(repo.codec().hash(plain), id.0);
        }
    }
}

#[test]
fn range_reads_merge_small_gaps_and_stay_within_the_read_limit() {
    let pack = PackId([1; 16]);
    let other = PackId([2; 16]);
    let at = |n: u8, pack, offset, length| {
        (
            ChunkId(ContentHash([n; 32])),
            ChunkLocation {
                pack,
                offset,
                length,
            },
        )
    };
    let reads = plan_range_reads(
        [
            at(3, pack, 300, 100),
            at(1, pack, 0, 100),
            at(2, pack, 100, 100),      // adjacent: merged
            at(4, pack, 10_000, 100),   // gap over 1000: a new read
            at(5, pack, 10_100, 5_000), // would make the read longer than 4096: a new read
            at(6, other, 0, 10),
        ],
        1000,
        4096,
    );
    let spans: Vec<_> = reads
        .iter()
        .map(|r| (r.pack, r.start, r.end, r.chunks.len()))
        .collect();
    assert_eq!(
        spans,
        vec![
            (pack, 0, 400, 3),
            (pack, 10_000, 10_100, 1),
            (pack, 10_100, 15_100, 1),
            (other, 0, 10, 1),
        ]
    );
    // Chunk bytes come out of the right place of a fetched range.
    let fetched: Vec<u8> = (0..400u32).map(|b| b as u8).collect();
    assert_eq!(reads[0].chunk_bytes(&fetched, 2).unwrap()[0], 44); // offset 300
    assert!(reads[0].chunk_bytes(&fetched[..350], 2).is_none());
}

#[tokio::test]
async fn a_damaged_pack_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path(), true).await;
    let chunks = chunks(&repo, 3);
    let pack = sealed_pack(&repo, &chunks).await;
    let path = dir.path().join(pack.id.key());

    // A flipped byte inside a chunk: that chunk fails its check, the others still decode.
    let mut bytes = std::fs::read(&path).unwrap();
    let second = pack.entries[1].location;
    bytes[second.offset as usize + 60] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let reads = plan_range_reads(
        pack.entries.iter().map(|e| (e.chunk, e.location)),
        0,
        1 << 20,
    );
    let fetched = repo.fetch_range(&reads[0]).await.unwrap();
    let mut buf = Vec::new();
    let results: Vec<bool> = (0..3)
        .map(|i| {
            let raw = reads[0].chunk_bytes(&fetched, i).unwrap();
            repo.decode_chunk_aligned(&reads[0].chunks[i].0, raw, &mut buf, 1)
                .is_ok()
        })
        .collect();
    assert_eq!(results, vec![true, false, true]);

    // A chunk decoded under another chunk's name is corrupt, not data.
    let raw = reads[0].chunk_bytes(&fetched, 0).unwrap();
    let err = repo
        .decode_chunk_aligned(&reads[0].chunks[2].0, raw, &mut buf, 1)
        .unwrap_err();
    assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");

    // A truncated pack: its footer is gone, and a read past its end says so.
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let err = repo.read_pack_trailer(pack.id).await.unwrap_err();
    assert!(err.to_string().contains("footer"), "{err}");
    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = repo.fetch_range(&reads[0]).await.unwrap_err();
    assert!(err.to_string().contains("shorter than its index"), "{err}");
}

#[tokio::test]
async fn indexes_merge_and_a_damaged_index_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path(), false).await;
    let all = chunks(&repo, 6);
    let first = sealed_pack(&repo, &all[..4]).await;
    // The second pack repeats chunk 3: the first location stays, either would do.
    let second = sealed_pack(&repo, &all[3..]).await;
    repo.put_index(&first.entries).await.unwrap();
    let key = repo.put_index(&second.entries).await.unwrap();
    let index = repo.load_chunk_index().await.unwrap();
    assert_eq!(index.len(), 6);
    let mut only_two = index.clone();
    only_two.retain(|id| *id == all[0].0 || *id == all[5].0);
    assert_eq!(only_two.len(), 2);
    assert_eq!(only_two.locate(&all[5].0).unwrap().pack, second.id);

    let path = dir.path().join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = repo.load_chunk_index().await.unwrap_err();
    assert!(matches!(err, RepoError::Corrupt { .. }), "{err}");
}

#[test]
fn pack_keys_round_trip() {
    let id = PackId([0xab; 16]);
    let key = id.key();
    assert_eq!(key, format!("packs/ab/{}", "ab".repeat(16)));
    assert_eq!(PackId::from_key(&key), Some(id));
    for bad in [
        "packs/ab/xyz",
        "packs/cd/abababababababababababababababab",
        "data/ab/x",
    ] {
        assert_eq!(PackId::from_key(bad), None, "{bad}");
    }
}
