//! Self-describing 4 KiB blocks for the demo's verified workload.
//!
//! Every block the workload writes says which block it is, which write
//! (generation) put it there, and carries a CRC32C over the whole block, so
//! a read can tell an intact current block from a lost write (an older
//! generation), a misplaced or torn one (corrupt), and the target can tell
//! a write it has already executed (a duplicate).

use bytes::{BufMut, Bytes, BytesMut};

/// The demo's block size.
pub(crate) const BLOCK: usize = 4096;

const MAGIC: u32 = 0x4846_4442; // "HFDB"

/// What a block read back turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// Never written: all zeroes.
    Zero,
    /// A valid block of `generation` at `block`.
    Written {
        /// The block index it claims.
        block: u64,
        /// The write that produced it.
        generation: u64,
    },
    /// Neither zero nor a valid block.
    Corrupt,
}

/// Builds block `block`'s content for write `generation`.
pub(crate) fn encode(block: u64, generation: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(BLOCK);
    b.put_u32(MAGIC);
    b.put_u64(block);
    b.put_u64(generation);
    // A fill that differs per block and generation, so a block copied to
    // the wrong place or from the wrong write cannot pass as valid.
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation;
    while b.len() < BLOCK - 4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.put_u64(x);
    }
    b.truncate(BLOCK - 4);
    let crc = crc32c::crc32c(&b);
    b.put_u32(crc);
    b.freeze()
}

/// Decodes what a read of one block returned.
pub(crate) fn decode(data: &[u8]) -> Content {
    if data.len() != BLOCK {
        return Content::Corrupt;
    }
    if data.iter().all(|&b| b == 0) {
        return Content::Zero;
    }
    let (body, crc) = data.split_at(BLOCK - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored
        || u32::from_be_bytes([body[0], body[1], body[2], body[3]]) != MAGIC
    {
        return Content::Corrupt;
    }
    let mut block = [0u8; 8];
    block.copy_from_slice(&body[4..12]);
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&body[12..20]);
    Content::Written {
        block: u64::from_be_bytes(block),
        generation: u64::from_be_bytes(generation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_damage_is_seen() {
        let b = encode(7, 3);
        assert_eq!(b.len(), BLOCK);
        assert_eq!(
            decode(&b),
            Content::Written {
                block: 7,
                generation: 3
            }
        );
        assert_eq!(decode(&[0u8; BLOCK]), Content::Zero);
        let mut torn = b.to_vec();
        torn[2000] ^= 1;
        assert_eq!(decode(&torn), Content::Corrupt);
        // Another block's valid content, read from here, is detected by
        // the caller comparing the block index.
        assert_eq!(
            decode(&encode(8, 3)),
            Content::Written {
                block: 8,
                generation: 3
            }
        );
        assert_ne!(encode(7, 3), encode(7, 4));
    }
}
