//! Unit tests of `codec`.

use super::*;

fn sample() -> Vec<u8> {
    (0..100_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

fn codecs() -> Vec<Codec> {
    let keys = DataKeys::from_data_key(1, &[3u8; 32]);
    let mut v = Vec::new();
    for algorithm in [Compression::None, Compression::Zstd, Compression::Lz4] {
        let c = CompressionSettings {
            algorithm,
            level: 1,
        };
        v.push(Codec::new(c, None));
        v.push(Codec::new(c, Some(keys.clone())));
    }
    v
}

#[test]
fn round_trip_every_combination() {
    let plain = sample();
    for codec in codecs() {
        let (hash, obj) = codec.encode(&plain).unwrap();
        let (header, back) = codec.decode(&obj).unwrap();
        assert_eq!(back, plain);
        assert_eq!(header.hash, hash);
        assert_eq!(header.encrypted, codec.is_encrypted());
        // Into a reused buffer at an aligned address: a larger buffer, then a smaller one.
        let mut buf = vec![7u8; 3];
        for align in [4096, 1] {
            let (h, range) = codec.decode_aligned(&obj, &mut buf, align).unwrap();
            assert_eq!(h.hash, hash);
            assert_eq!(
                buf.as_ptr().wrapping_add(range.start).align_offset(align),
                0
            );
            assert_eq!(&buf[range], &plain[..]);
        }
    }
}

#[test]
fn aligned_decoding_detects_damage_too() {
    let plain = sample();
    for codec in codecs() {
        let (_, mut obj) = codec.encode(&plain).unwrap();
        let last = obj.len() - 1;
        obj[last] ^= 1;
        let mut buf = Vec::new();
        assert!(codec.decode_aligned(&obj, &mut buf, 4096).is_err());
    }
}

#[test]
fn streamed_encoding_matches_the_one_shot_hash_and_decodes() {
    let plain = sample();
    let mut streamed_any = false;
    for codec in codecs() {
        let Some(mut enc) = codec.stream_encoder(plain.len() as u64).unwrap() else {
            continue;
        };
        streamed_any = true;
        for piece in plain.chunks(1000) {
            enc.update(piece).unwrap();
        }
        let (hash, obj) = enc.finish().unwrap().expect("compressible");
        assert_eq!(hash, codec.hash(&plain));
        let (header, back) = codec.decode(&obj).unwrap();
        assert_eq!(back, plain);
        assert_eq!(header.hash, hash);
        assert_eq!(header.compression, Compression::Zstd);

        let mut short = codec
            .stream_encoder(plain.len() as u64 + 1)
            .unwrap()
            .unwrap();
        short.update(&plain).unwrap();
        assert!(short.finish().is_err(), "a file that shrank is an error");
        let mut long = codec.stream_encoder(3).unwrap().unwrap();
        assert!(long.update(&plain).is_err(), "a file that grew is an error");
        let mut noise = vec![0u8; 4096];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let mut incompressible = codec.stream_encoder(noise.len() as u64).unwrap().unwrap();
        incompressible.update(&noise).unwrap();
        assert!(incompressible.finish().unwrap().is_none());
    }
    assert!(streamed_any);
}

#[test]
fn any_flipped_byte_is_detected() {
    let plain = sample();
    for codec in codecs() {
        let (_, obj) = codec.encode(&plain).unwrap();
        for pos in [
            0,
            5,
            9,
            20,
            HEADER_LEN,
            HEADER_LEN + 30,
            obj.len() / 2,
            obj.len() - 1,
        ] {
            let mut bad = obj.clone();
            bad[pos] ^= 0x40;
            assert!(
                codec.decode(&bad).is_err(),
                "flip at {pos} undetected ({:?})",
                codec.compression
            );
        }
        assert!(codec.decode(&obj[..obj.len() - 1]).is_err());
    }
}

#[test]
fn encrypted_objects_hide_plaintext_and_use_keyed_hash() {
    let keys = DataKeys::from_data_key(1, &[3u8; 32]);
    let codec = Codec::new(
        CompressionSettings {
            algorithm: Compression::None,
            level: 0,
        },
        Some(keys),
    );
    let plain = b"secret secret secret secret".repeat(10);
    let (hash, obj) = codec.encode(&plain).unwrap();
    assert_ne!(hash.0, *blake3::hash(&plain).as_bytes());
    assert!(!obj.windows(13).any(|w| w == b"secret secret"));
    let other = Codec::new(
        codec.compression,
        Some(DataKeys::from_data_key(1, &[4u8; 32])),
    );
    assert!(other.decode(&obj).is_err());
}

#[test]
fn incompressible_data_is_stored_plain() {
    let mut noise = vec![0u8; 4096];
    blake3::Hasher::new().finalize_xof().fill(&mut noise);
    let codec = Codec::new(CompressionSettings::default(), None);
    let (_, obj) = codec.encode(&noise).unwrap();
    assert_eq!(
        ObjectHeader::parse(&obj).unwrap().compression,
        Compression::None
    );
    assert_eq!(codec.decode(&obj).unwrap().1, noise);
}
