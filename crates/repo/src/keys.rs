//! The only place repository keys are spelled (docs/FORMAT.md, "Layout").

use lifeboat_pg::timeline::TimelineId;
use lifeboat_pg::walname::{WalFileName, WalSegmentName};

/// Repository config (plain JSON, holds the wrapped data key). Written once by `init`.
pub const CONFIG: &str = "lifeboat.json";
/// Second copy of [`CONFIG`], read when the first is missing or damaged.
pub const CONFIG_COPY: &str = "lifeboat.json.copy";
/// The cluster this repository belongs to (an encoded object), written by the first `wal-push`.
pub const IDENTITY: &str = "cluster.json";
pub const WAL_PREFIX: &str = "wal/";
const HISTORY_DIR: &str = "wal/history/";
pub const CHUNK_PREFIX: &str = "data/";
pub const BACKUP_PREFIX: &str = "backups/";
const MANIFEST_NAME: &str = "manifest";

/// `data/<first two hex digits>/<64 hex digits>`: a content-addressed chunk of backup data. The
/// two-digit directory keeps local directories and object-store listings evenly spread.
pub fn chunk(hash_hex: &str) -> String {
    format!(
        "{CHUNK_PREFIX}{}/{hash_hex}",
        &hash_hex[..2.min(hash_hex.len())]
    )
}

/// The hex content hash a chunk key names: `data/<hh>/<64 lowercase hex>` with `hh` its first
/// two digits. Anything else under `data/` is not a chunk (and not ours to judge).
pub fn parse_chunk_key(key: &str) -> Option<&str> {
    let (dir, name) = key.strip_prefix(CHUNK_PREFIX)?.split_once('/')?;
    (name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && dir.len() == 2
        && name.starts_with(dir))
    .then_some(name)
}

/// The 256 directories chunks are spread over (`data/00/` .. `data/ff/`): listing them at the
/// same time takes one round trip per 1,000 chunks of the largest, not of all of them.
pub fn chunk_dirs() -> impl Iterator<Item = String> {
    (0..=255u8).map(|b| format!("{CHUNK_PREFIX}{b:02x}/"))
}

/// `backups/<label>/manifest`: written last; a backup exists exactly when this object does.
pub fn manifest(label: &str) -> String {
    format!("{BACKUP_PREFIX}{label}/{MANIFEST_NAME}")
}

/// The backup label a manifest key names.
pub fn parse_manifest_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix(BACKUP_PREFIX)?;
    let (label, name) = rest.split_once('/')?;
    (name == MANIFEST_NAME && !label.is_empty()).then(|| label.to_string())
}

/// Logical dumps (docs/FORMAT.md, "Dumps").
pub const DUMP_PREFIX: &str = "dumps/";

/// `dumps/<label>/manifest`: written last; a dump exists exactly when this object does.
pub fn dump_manifest(label: &str) -> String {
    format!("{DUMP_PREFIX}{label}/{MANIFEST_NAME}")
}

/// The dump label a dump manifest key names.
pub fn parse_dump_manifest_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix(DUMP_PREFIX)?;
    let (label, name) = rest.split_once('/')?;
    (name == MANIFEST_NAME && !label.is_empty()).then(|| label.to_string())
}

/// `wal/<timeline+log>/<name>` for segments and the files named after one (`.partial`, `.backup`),
/// so a directory holds at most one log file's worth of segments (256 at 16 MiB); history files
/// go to `wal/history/`.
pub fn wal(name: &WalFileName) -> String {
    match name.segment() {
        None => format!("{HISTORY_DIR}{name}"),
        Some(segment) => format!("{}{name}", wal_dir(segment)),
    }
}

/// `wal/<timeline+log>/`: the directory of `segment`, of the other segments of its log file
/// (same timeline, same first 16 digits), and of the files named after them. List it to see
/// those segments.
pub fn wal_dir(segment: &WalSegmentName) -> String {
    let text = segment.to_string();
    format!("{WAL_PREFIX}{}/", &text[..16.min(text.len())])
}

/// `wal/<timeline>`: the prefix every directory of `timeline`'s segments starts with (and no
/// other timeline's, nor the history directory's). List it to see all of the timeline's WAL.
pub fn wal_timeline_prefix(timeline: TimelineId) -> String {
    format!("{WAL_PREFIX}{:08X}", timeline.get())
}

/// The WAL file a key stores, if it is a WAL key.
pub fn parse_wal_key(key: &str) -> Option<WalFileName> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    let (_, file) = rest.split_once('/')?;
    let name = WalFileName::parse(file).ok()?;
    (wal(&name) == key).then_some(name)
}

/// WAL received by `wal-stream` for segments not yet complete (docs/FORMAT.md, "Streamed WAL").
pub const STREAM_PREFIX: &str = "stream/";

/// `stream/<timeline+log>/<segment>.<start>-<end>`: bytes `start..end` (offsets in the segment,
/// 8 upper-case hex digits each) of a segment being streamed. Each upload is a new key, so a
/// piece never changes; a segment's streamed prefix is the chain of pieces from offset 0.
pub fn stream_piece(segment: &WalSegmentName, start: u32, end: u32) -> String {
    format!("{}{segment}.{start:08X}-{end:08X}", stream_dir(segment))
}

/// `stream/<timeline+log>/`: where the pieces of `segment` (and of its log file's other
/// segments) lie.
pub fn stream_dir(segment: &WalSegmentName) -> String {
    let text = segment.to_string();
    format!("{STREAM_PREFIX}{}/", &text[..16.min(text.len())])
}

/// The (segment, start, end) a piece key names; `start < end`.
pub fn parse_stream_piece_key(key: &str) -> Option<(WalSegmentName, u32, u32)> {
    let rest = key.strip_prefix(STREAM_PREFIX)?;
    let (_, file) = rest.split_once('/')?;
    let (segment, range) = file.split_once('.')?;
    let (start, end) = range.split_once('-')?;
    let hex8 = |s: &str| {
        (s.len() == 8
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
    };
    let segment: WalSegmentName = segment.parse().ok()?;
    let (start, end) = (hex8(start)?, hex8(end)?);
    (start < end && stream_piece(&segment, start, end) == key).then_some((segment, start, end))
}

/// Packs of chunks and the indexes locating chunks in them (docs/design/packs.md).
pub const PACK_PREFIX: &str = "packs/";
pub const INDEX_PREFIX: &str = "index/";

/// `packs/<first two hex digits>/<32 hex digits>`: a pack, named by a random id.
pub fn pack(id_hex: &str) -> String {
    format!("{PACK_PREFIX}{}/{id_hex}", &id_hex[..2.min(id_hex.len())])
}

/// The id (hex) a pack key names.
pub fn parse_pack_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix(PACK_PREFIX)?;
    let (_, id) = rest.split_once('/')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && pack(id) == key)
        .then(|| id.to_string())
}

/// `index/<32 hex digits>`: one index object, named by a random id.
pub fn index(id_hex: &str) -> String {
    format!("{INDEX_PREFIX}{id_hex}")
}

/// The id (hex) an index key names; temporary and foreign keys under `index/` are not indexes.
pub fn parse_index_key(key: &str) -> Option<&str> {
    let id = key.strip_prefix(INDEX_PREFIX)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `verify/state`: what `verify` read and found intact (docs/FORMAT.md, "Verification"),
/// rewritten whole by a run that changed it.
pub const VERIFY_STATE: &str = "verify/state";
/// Second copy of [`VERIFY_STATE`], written after it.
pub const VERIFY_STATE_COPY: &str = "verify/state.copy";

/// Lock objects, one per running holder (docs/FORMAT.md, "Locks"); the only objects that are
/// rewritten (the heartbeat) and deleted by their writer.
pub const LOCK_PREFIX: &str = "locks/";

/// `locks/<kind>-<id>`: the lock of one running `backup` or `expire`. `id` is random, so two
/// holders never write the same key.
pub fn lock(kind: &str, id: &str) -> String {
    format!("{LOCK_PREFIX}{kind}-{id}")
}

/// The (kind, id) a lock key names.
pub fn parse_lock_key(key: &str) -> Option<(String, String)> {
    let name = key.strip_prefix(LOCK_PREFIX)?;
    let (kind, id) = name.split_once('-')?;
    (!kind.is_empty() && !id.is_empty() && !id.contains('/'))
        .then(|| (kind.to_string(), id.to_string()))
}

/// Operational records (docs/FORMAT.md, "Records"); nothing here is needed to restore.
pub const RECORDS_PREFIX: &str = "records/";
pub const JOBS_PREFIX: &str = "records/jobs/";
pub const DRILLS_PREFIX: &str = "records/drills/";
/// What the daemon has alerted about.
pub const ALERT_STATE: &str = "records/alerts";
/// The repository's stored size over time.
pub const SIZE_HISTORY: &str = "records/size-history";

/// `records/jobs/<job>`: one job's run history.
pub fn job_history(job: &str) -> String {
    format!("{JOBS_PREFIX}{job}")
}

pub fn parse_job_history_key(key: &str) -> Option<String> {
    let job = key.strip_prefix(JOBS_PREFIX)?;
    (!job.is_empty() && !job.contains('/')).then(|| job.to_string())
}

/// `records/drills/<id>`: one drill's result.
pub fn drill(id: &str) -> String {
    format!("{DRILLS_PREFIX}{id}")
}

pub fn parse_drill_key(key: &str) -> Option<String> {
    let id = key.strip_prefix(DRILLS_PREFIX)?;
    (!id.is_empty() && !id.contains('/') && !id.contains(".tmp")).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_keys_parse_only_as_written() {
        let hex = "ab".repeat(32);
        let key = chunk(&hex);
        assert_eq!(parse_chunk_key(&key), Some(hex.as_str()));
        assert_eq!(parse_chunk_key(&key.to_uppercase()), None);
        assert_eq!(parse_chunk_key("data/ab/xyz"), None);
        assert_eq!(parse_chunk_key(&format!("backups/ab/{hex}")), None);
        assert_eq!(parse_chunk_key(&key.replace("data/ab", "data/cd")), None);
        assert_eq!(chunk_dirs().count(), 256);
        assert!(chunk_dirs().any(|d| key.starts_with(&d)));
    }

    #[test]
    fn stream_piece_keys_round_trip() {
        let seg: WalSegmentName = "000000020000000A000000FE".parse().unwrap();
        let key = stream_piece(&seg, 0, 0x2000);
        assert_eq!(
            key,
            "stream/000000020000000A/000000020000000A000000FE.00000000-00002000"
        );
        assert_eq!(parse_stream_piece_key(&key), Some((seg, 0, 0x2000)));
        assert!(key.starts_with(&stream_dir(&seg)));
        for bad in [
            "stream/000000020000000A/000000020000000A000000FE.00002000-00002000",
            "stream/000000020000000A/000000020000000A000000FE.00000000-00002000.tmp",
            "stream/0000000200000000/000000020000000A000000FE.00000000-00002000",
            "stream/000000020000000A/000000020000000A000000FE.0000000a-00002000",
            "wal/000000020000000A/000000020000000A000000FE",
        ] {
            assert_eq!(parse_stream_piece_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn wal_keys_round_trip() {
        for n in [
            "000000010000000A000000FE",
            "000000020000000000000003.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            let name = WalFileName::parse(n).unwrap();
            let key = wal(&name);
            assert_eq!(parse_wal_key(&key), Some(name), "{key}");
        }
        assert_eq!(
            wal(&WalFileName::parse("000000010000000A000000FE").unwrap()),
            "wal/000000010000000A/000000010000000A000000FE"
        );
        assert_eq!(
            parse_wal_key("wal/0000000100000000/000000010000000A000000FE"),
            None
        );
        assert_eq!(parse_wal_key("wal/x"), None);
    }

    #[test]
    fn wal_directories_hold_their_segments() {
        let seg: WalSegmentName = "000000030000000A000000FE".parse().unwrap();
        assert_eq!(wal_dir(&seg), "wal/000000030000000A/");
        for name in [
            WalFileName::Segment(seg),
            WalFileName::Partial(seg),
            WalFileName::parse("000000030000000A000000FE.00000028.backup").unwrap(),
        ] {
            assert!(wal(&name).starts_with(&wal_dir(&seg)), "{name}");
        }
        let tli = TimelineId::new(3).unwrap();
        assert_eq!(wal_timeline_prefix(tli), "wal/00000003");
        assert!(wal_dir(&seg).starts_with(&wal_timeline_prefix(tli)));
        assert!(!wal(&WalFileName::History(tli)).starts_with(&wal_timeline_prefix(tli)));
        let other = TimelineId::new(0x30).unwrap();
        assert!(!wal_dir(&seg).starts_with(&wal_timeline_prefix(other)));
    }
}
