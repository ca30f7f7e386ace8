//! Streamed WAL in the repository: the segment buffer's pieces and complete segments, and the
//! prefix read back when a piece is damaged.

use bytes::Bytes;
use lifeboat_pg::lsn::Lsn;
use lifeboat_storage::PutMode;

use super::*;
use crate::stream::SegmentBuffer;

/// A segment's worth of WAL pages as PostgreSQL 15 writes them for the tests' cluster: each 8 KiB
/// page starts with its header (the first a long one), the rest is a pattern.
fn wal_bytes(segment: &WalSegmentName) -> Vec<u8> {
    const PAGE: usize = 8192;
    let start = segment.start_lsn(SEG).unwrap().0;
    let mut bytes = vec![0u8; SEG as usize];
    for (i, page) in bytes.chunks_mut(PAGE).enumerate() {
        let info: u16 = if i == 0 { 0x0002 } else { 0 }; // XLP_LONG_HEADER on the first page
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&info.to_le_bytes());
        page[4..8].copy_from_slice(&segment.timeline.get().to_le_bytes());
        page[8..16].copy_from_slice(&(start + (i * PAGE) as u64).to_le_bytes());
        if i == 0 {
            page[24..32].copy_from_slice(&1u64.to_le_bytes());
            page[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            page[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
        }
        for (j, b) in page.iter_mut().enumerate().skip(40) {
            *b = (i + j) as u8;
        }
    }
    bytes
}

#[tokio::test]
async fn pieces_then_the_complete_segment_replace_them() {
    let repo = repo().await;
    let first = seg(1, 3);
    let wal = wal_bytes(&first);
    let start = first.start_lsn(SEG).unwrap();
    let mut buffer = SegmentBuffer::new(tli(1), start, SEG).unwrap();

    buffer.receive(&repo, start, &wal[..100_000]).await.unwrap();
    buffer.flush(&repo).await.unwrap();
    buffer
        .receive(&repo, Lsn(start.0 + 100_000), &wal[100_000..300_000])
        .await
        .unwrap();
    buffer.flush(&repo).await.unwrap();
    assert_eq!(buffer.durable(), Lsn(start.0 + 300_000));
    let pieces = repo.list_stream_pieces_of(&first).await.unwrap();
    assert_eq!(pieces.len(), 2);
    let prefix = repo.read_streamed_prefix(&first, &pieces).await.unwrap();
    assert!(prefix.unusable.is_empty());
    assert_eq!(prefix.bytes, wal[..300_000]);

    // The rest of the segment and the start of the next: the segment is stored whole, as
    // wal-push would, and its pieces are gone.
    let next = seg(1, 4);
    let next_wal = wal_bytes(&next);
    let mut rest = wal[300_000..].to_vec();
    rest.extend_from_slice(&next_wal[..5_000]);
    let stored = buffer
        .receive(&repo, Lsn(start.0 + 300_000), &rest)
        .await
        .unwrap();
    assert_eq!(stored.segments, vec![first]);
    assert_eq!(
        repo.get_wal(&WalFileName::Segment(first)).await.unwrap(),
        Some(wal.clone())
    );
    assert!(repo.list_stream_pieces(None).await.unwrap().is_empty());
    buffer.flush(&repo).await.unwrap();
    let pieces = repo.list_stream_pieces(Some(tli(1))).await.unwrap();
    assert_eq!(pieces.len(), 1);
    assert_eq!(
        (pieces[0].segment, pieces[0].start, pieces[0].end),
        (next, 0, 5_000)
    );

    // WAL that does not follow on is refused, not stored.
    assert!(
        buffer
            .receive(&repo, Lsn(start.0 + 1), &[0u8; 10])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_damaged_piece_shortens_the_prefix_to_what_other_pieces_cover() {
    let repo = repo().await;
    let segment = seg(1, 7);
    let wal = wal_bytes(&segment);
    for (from, to) in [(0usize, 100usize), (100, 150)] {
        repo.put_stream_piece(
            &segment,
            from as u32,
            Bytes::copy_from_slice(&wal[from..to]),
        )
        .await
        .unwrap();
    }
    // A piece from 100 to 200 whose object is garbage.
    repo.store()
        .put(
            &lifeboat_repo::keys::stream_piece(&segment, 100, 200),
            Bytes::from_static(b"not an object"),
            PutMode::Create,
        )
        .await
        .unwrap();
    let pieces = repo.list_stream_pieces_of(&segment).await.unwrap();
    assert_eq!(pieces.len(), 3);
    let prefix = repo.read_streamed_prefix(&segment, &pieces).await.unwrap();
    assert_eq!(prefix.bytes, wal[..150]);
    assert_eq!(prefix.unusable.len(), 1, "{:?}", prefix.unusable);
    assert!(prefix.unusable[0].0.ends_with("00000064-000000C8"));
}

#[tokio::test]
async fn many_small_flushes_merge_into_few_pieces() {
    let repo = repo().await;
    let segment = seg(1, 9);
    let wal = wal_bytes(&segment);
    let start = segment.start_lsn(SEG).unwrap();
    let mut buffer = SegmentBuffer::new(tli(1), start, SEG).unwrap();
    let mut written = 0u64;
    for i in 0..20 {
        let from = i * 1000;
        buffer
            .receive(&repo, Lsn(start.0 + from as u64), &wal[from..from + 1000])
            .await
            .unwrap_or_else(|e| panic!("receive {i}: {e}"));
        let stored = buffer.flush(&repo).await.unwrap();
        written += stored.piece_bytes;
    }
    let end = (buffer.received().0 - start.0) as usize;
    let pieces = repo.list_stream_pieces_of(&segment).await.unwrap();
    // 20 flushes: two merged pieces of 8, then 4 single ones.
    assert_eq!(pieces.len(), 6, "{pieces:?}");
    let prefix = repo.read_streamed_prefix(&segment, &pieces).await.unwrap();
    assert!(prefix.unusable.is_empty());
    assert_eq!(prefix.bytes, wal[..end]);
    // Each byte written once as a piece and at most once more in a merge.
    assert!(
        written <= 2 * end as u64,
        "{written} bytes written for {end}"
    );
}
