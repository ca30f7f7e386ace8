//! The object codec: how plaintext becomes a stored object and back, verifying every byte.
//!
//! Every object except the repository config is `header || payload` (docs/FORMAT.md, "Objects"):
//! the header carries the plaintext length and its content hash; the payload is the compressed
//! plaintext, sealed with XChaCha20-Poly1305 (header as associated data) when the repository is
//! encrypted. Decoding checks the AEAD tag, the decompressed length and the hash, so a flipped bit
//! anywhere is an error, never wrong bytes handed to PostgreSQL.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::crypto::{self, DataKeys};

pub const MAGIC: &[u8; 4] = b"LBOB";
pub const OBJECT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
    Lz4,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
            Self::Lz4 => 2,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Self::None,
            1 => Self::Zstd,
            2 => Self::Lz4,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
        })
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            other => Err(format!(
                "unknown compression \"{other}\": expected zstd, lz4 or none"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressionSettings {
    pub algorithm: Compression,
    /// zstd level (negative levels are zstd's fast modes); ignored by lz4 and none.
    #[serde(default)]
    pub level: i32,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            algorithm: Compression::Zstd,
            level: 1,
        }
    }
}

/// A content hash: BLAKE3 of the plaintext, keyed in encrypted repositories.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// The fixed-size header at the start of every object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHeader {
    pub compression: Compression,
    pub encrypted: bool,
    pub key_id: u8,
    pub plain_len: u64,
    pub hash: ContentHash,
}

impl ObjectHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = OBJECT_VERSION;
        b[5] = self.compression.code();
        b[6] = u8::from(self.encrypted);
        b[7] = self.key_id;
        b[8..16].copy_from_slice(&self.plain_len.to_le_bytes());
        b[16..48].copy_from_slice(&self.hash.0);
        b
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "{} bytes is shorter than an object header ({HEADER_LEN})",
                    bytes.len()
                )
            })?;
        if &b[0..4] != MAGIC {
            return Err("not a lifeboat object (bad magic)".into());
        }
        if b[4] != OBJECT_VERSION {
            return Err(format!("unknown object version {}", b[4]));
        }
        let compression = Compression::from_code(b[5])
            .ok_or_else(|| format!("unknown compression code {}", b[5]))?;
        let encrypted = match b[6] {
            0 => false,
            1 => true,
            other => return Err(format!("unknown encryption code {other}")),
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[16..48]);
        Ok(Self {
            compression,
            encrypted,
            key_id: b[7],
            plain_len: u64::from_le_bytes(len),
            hash: ContentHash(hash),
        })
    }
}

/// See [`Codec::stream_encoder`].
pub struct StreamEncoder<'a> {
    codec: &'a Codec,
    hasher: blake3::Hasher,
    compressed: Vec<u8>,
    plain_len: u64,
    seen: u64,
}

impl StreamEncoder<'_> {
    /// Hash `piece` and compress it as a frame of its own. A one-shot frame of a contiguous
    /// piece takes zstd's fast path; a streaming context wraps around its window and takes the
    /// slower "external dictionary" path, about twice the CPU per byte of WAL.
    pub fn update(&mut self, piece: &[u8]) -> Result<(), String> {
        self.seen += piece.len() as u64;
        if self.seen > self.plain_len {
            return Err(format!(
                "more than the announced {} bytes: the file grew while it was read",
                self.plain_len
            ));
        }
        self.hasher.update(piece);
        let level = self.codec.compression.level;
        ZSTD_COMPRESSOR.with_borrow_mut(|slot| {
            let compressor = zstd_compressor(slot, level)?;
            // The context and the frame buffer are the thread's, reused from file to file.
            ZSTD_FRAME.with_borrow_mut(|frame| {
                frame.clear();
                frame.reserve(zstd::zstd_safe::compress_bound(piece.len()));
                compressor
                    .compress_to_buffer(piece, frame)
                    .map_err(|e| format!("zstd: {e}"))?;
                self.compressed.extend_from_slice(frame);
                Ok(())
            })
        })
    }

    /// The content hash and the encoded object; `Ok(None)` when the data did not compress (the
    /// caller then stores it as is with [`Codec::encode`], as the one-shot path would).
    pub fn finish(self) -> Result<Option<(ContentHash, Vec<u8>)>, String> {
        if self.seen != self.plain_len {
            return Err(format!(
                "{} bytes read of the announced {}: the file changed while it was read",
                self.seen, self.plain_len
            ));
        }
        if self.compressed.len() as u64 >= self.plain_len {
            return Ok(None);
        }
        let hash = ContentHash(*self.hasher.finalize().as_bytes());
        let object = self.codec.seal_object(
            Compression::Zstd,
            self.plain_len,
            hash,
            Cow::Owned(self.compressed),
        )?;
        Ok(Some((hash, object)))
    }
}

/// Encodes and decodes objects for one repository (its compression and keys).
#[derive(Debug, Clone)]
pub struct Codec {
    pub compression: CompressionSettings,
    keys: Option<DataKeys>,
}

impl Codec {
    pub fn new(compression: CompressionSettings, keys: Option<DataKeys>) -> Self {
        Self { compression, keys }
    }

    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    pub fn hash(&self, plain: &[u8]) -> ContentHash {
        ContentHash(match &self.keys {
            Some(k) => *blake3::keyed_hash(&k.hashing, plain).as_bytes(),
            None => *blake3::hash(plain).as_bytes(),
        })
    }

    pub fn encode(&self, plain: &[u8]) -> Result<(ContentHash, Vec<u8>), String> {
        let hash = self.hash(plain);
        self.encode_with_hash(plain, hash).map(|o| (hash, o))
    }

    pub fn encode_with_hash(&self, plain: &[u8], hash: ContentHash) -> Result<Vec<u8>, String> {
        let mut algorithm = self.compression.algorithm;
        // Borrowed when stored as is: a 16 MiB segment is not copied for nothing.
        let mut compressed = match algorithm {
            Compression::None => Cow::Borrowed(plain),
            _ => Cow::Owned(compress(plain, self.compression)?),
        };
        // Incompressible data (already-compressed files) is stored as is rather than grown.
        if compressed.len() >= plain.len() && algorithm != Compression::None {
            algorithm = Compression::None;
            compressed = Cow::Borrowed(plain);
        }
        self.seal_object(algorithm, plain.len() as u64, hash, compressed)
    }

    /// Header, then the payload: encrypted when the repository is, authenticated with the header.
    fn seal_object(
        &self,
        compression: Compression,
        plain_len: u64,
        hash: ContentHash,
        compressed: Cow<'_, [u8]>,
    ) -> Result<Vec<u8>, String> {
        let header = ObjectHeader {
            compression,
            encrypted: self.keys.is_some(),
            key_id: self.keys.as_ref().map_or(0, |k| k.key_id),
            plain_len,
            hash,
        };
        let header_bytes = header.to_bytes();
        let payload = match &self.keys {
            Some(k) => crypto::seal(&k.encryption, &compressed, &header_bytes)
                .map_err(|e| e.to_string())?,
            None => compressed.into_owned(),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&header_bytes);
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// An encoder fed piece by piece, for a large file read through one small buffer: hashing
    /// and compressing each piece while it is still in the CPU cache costs far less than reading
    /// the whole file into fresh memory first (a 16 MiB WAL segment faults in 4096 pages). `None`
    /// for compressions without a streaming form here (lz4 blocks, none): use [`encode`](Self::encode).
    pub fn stream_encoder(&self, plain_len: u64) -> Result<Option<StreamEncoder<'_>>, String> {
        if self.compression.algorithm != Compression::Zstd {
            return Ok(None);
        }
        let capacity = usize::try_from(plain_len / 4).unwrap_or(0);
        // Every frame records its content size; a payload of several frames is still one zstd
        // stream (RFC 8878), which any zstd decoder, ours included, reads whole.
        let hasher = match &self.keys {
            Some(k) => blake3::Hasher::new_keyed(&k.hashing),
            None => blake3::Hasher::new(),
        };
        Ok(Some(StreamEncoder {
            codec: self,
            hasher,
            compressed: Vec::with_capacity(capacity),
            plain_len,
            seen: 0,
        }))
    }

    /// Decode and verify an object; the error says what failed (for `RepoError::Corrupt`).
    pub fn decode(&self, object: &[u8]) -> Result<(ObjectHeader, Vec<u8>), String> {
        let mut plain = Vec::new();
        let header = self.decode_into(object, &mut plain)?;
        Ok((header, plain))
    }

    /// [`decode`](Self::decode) into `out` (cleared first), so a caller decoding many objects can
    /// reuse one buffer instead of faulting in a fresh one each time.
    pub fn decode_into(&self, object: &[u8], out: &mut Vec<u8>) -> Result<ObjectHeader, String> {
        let (header, compressed) = self.open(object)?;
        decompress_into(&compressed, header.compression, header.plain_len, out)?;
        self.check_plain(&header, out)?;
        Ok(header)
    }

    /// [`decode`](Self::decode) into the start of `buf`, grown to the recorded length plus
    /// `align` when shorter, at the first address of it that is a multiple of `align` (for
    /// `O_DIRECT` writes straight from it); the range of `buf` that holds the content.
    pub fn decode_aligned(
        &self,
        object: &[u8],
        buf: &mut Vec<u8>,
        align: usize,
    ) -> Result<(ObjectHeader, std::ops::Range<usize>), String> {
        let (header, compressed) = self.open(object)?;
        let len = checked_len(header.plain_len)?;
        if buf.len() < len + align {
            buf.resize(len + align, 0);
        }
        let start = buf.as_ptr().align_offset(align.max(1));
        let out = buf
            .get_mut(start..start + len)
            .ok_or_else(|| format!("cannot align a buffer to {align} bytes"))?;
        let n = decompress_to_slice(&compressed, header.compression, out)?;
        let plain = &out[..n];
        self.check_plain(&header, plain)?;
        Ok((header, start..start + n))
    }

    /// The header, and the payload decrypted and authenticated when the repository is encrypted.
    fn open<'o>(&self, object: &'o [u8]) -> Result<(ObjectHeader, Cow<'o, [u8]>), String> {
        let header = ObjectHeader::parse(object)?;
        let payload = &object[HEADER_LEN..];
        let compressed = match (&self.keys, header.encrypted) {
            (Some(k), true) => {
                if header.key_id != k.key_id {
                    return Err(format!(
                        "encrypted with key {} but the repository key is {}",
                        header.key_id, k.key_id
                    ));
                }
                Cow::Owned(
                    crypto::open(&k.encryption, payload, &object[..HEADER_LEN]).map_err(|_| {
                        "authentication failed: the object was altered or damaged".to_string()
                    })?,
                )
            }
            (None, false) => Cow::Borrowed(payload),
            (Some(_), false) => {
                return Err("object is not encrypted in an encrypted repository".into());
            }
            (None, true) => return Err("object is encrypted in an unencrypted repository".into()),
        };
        Ok((header, compressed))
    }

    /// The decoded content has the recorded length and hash.
    fn check_plain(&self, header: &ObjectHeader, plain: &[u8]) -> Result<(), String> {
        if plain.len() as u64 != header.plain_len {
            return Err(format!(
                "length {} differs from the recorded {}",
                plain.len(),
                header.plain_len
            ));
        }
        let actual = self.hash(plain);
        if actual != header.hash {
            return Err(format!(
                "content hash {actual} differs from the recorded {}",
                header.hash
            ));
        }
        Ok(())
    }
}

thread_local! {
    // A zstd context per thread, kept between objects: making one per call costs an allocation
    // of several hundred KiB and its page faults, as much as compressing a small object.
    static ZSTD_COMPRESSOR: std::cell::RefCell<ZstdSlot> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

type ZstdSlot = Option<(i32, zstd::bulk::Compressor<'static>)>;

/// The thread's compressor for `level`, made on first use.
fn zstd_compressor(
    slot: &mut ZstdSlot,
    level: i32,
) -> Result<&mut zstd::bulk::Compressor<'static>, String> {
    if slot.as_ref().is_none_or(|(l, _)| *l != level) {
        let c = zstd::bulk::Compressor::new(level).map_err(|e| format!("zstd: {e}"))?;
        *slot = Some((level, c));
    }
    slot.as_mut()
        .map(|(_, c)| c)
        .ok_or_else(|| "zstd: no compressor".to_string())
}

fn zstd_compress(plain: &[u8], level: i32) -> Result<Vec<u8>, String> {
    ZSTD_COMPRESSOR.with_borrow_mut(|slot| {
        let c = zstd_compressor(slot, level)?;
        c.compress(plain).map_err(|e| format!("zstd: {e}"))
    })
}

fn compress(plain: &[u8], settings: CompressionSettings) -> Result<Vec<u8>, String> {
    match settings.algorithm {
        Compression::None => Ok(plain.to_vec()),
        Compression::Zstd => zstd_compress(plain, settings.level),
        Compression::Lz4 => Ok(lz4_flex::block::compress(plain)),
    }
}

fn decompress_into(
    data: &[u8],
    algorithm: Compression,
    plain_len: u64,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let cap = checked_len(plain_len)?;
    out.clear();
    match algorithm {
        Compression::None => out.extend_from_slice(data),
        Compression::Zstd => {
            // Into the spare capacity: no zero-fill of a buffer zstd overwrites anyway.
            out.reserve(cap);
            with_zstd_decompressor(|d| d.decompress_to_buffer(data, out))?;
        }
        Compression::Lz4 => {
            out.resize(cap, 0);
            let n = lz4_flex::block::decompress_into(data, out).map_err(|e| format!("lz4: {e}"))?;
            out.truncate(n);
        }
    }
    Ok(())
}

/// Run `f` with the thread's zstd decompressor, made on first use.
fn with_zstd_decompressor<R>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<R>,
) -> Result<R, String> {
    ZSTD_DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        match slot {
            Some(d) => f(d).map_err(|e| format!("zstd: {e}")),
            None => Err("zstd: no decompressor".to_string()),
        }
    })
}

/// The recorded length bounds the allocation; a corrupt header cannot ask for more than 4 GiB.
fn checked_len(plain_len: u64) -> Result<usize, String> {
    usize::try_from(plain_len)
        .ok()
        .filter(|&n| n <= 4 << 30)
        .ok_or_else(|| format!("recorded length {plain_len} is implausible"))
}

/// Decompress into `out`, as long as the recorded length; the bytes written.
fn decompress_to_slice(
    data: &[u8],
    algorithm: Compression,
    out: &mut [u8],
) -> Result<usize, String> {
    match algorithm {
        Compression::None => {
            let dest = out
                .get_mut(..data.len())
                .ok_or_else(|| format!("{} bytes stored for fewer recorded", data.len()))?;
            dest.copy_from_slice(data);
            Ok(data.len())
        }
        Compression::Zstd => with_zstd_decompressor(|d| d.decompress_to_buffer(data, out)),
        Compression::Lz4 => {
            lz4_flex::block::decompress_into(data, out).map_err(|e| format!("lz4: {e}"))
        }
    }
}

#[cfg(test)]
mod tests;
