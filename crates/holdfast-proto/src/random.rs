//! Randomness as an input. The core draws session secrets and its incarnation
//! from a source the driver supplies, so a simulation can seed it and a real
//! target can use the operating system's generator.

/// A source of random bytes supplied by the driver.
pub trait RandomSource: Send {
    /// Fills `dest` with random bytes. Real targets must use a
    /// cryptographically secure source: session secrets come from here.
    fn fill_bytes(&mut self, dest: &mut [u8]);
}

/// A small deterministic generator (SplitMix64) for simulations and tests.
/// Not cryptographically secure: never use it for a real target.
#[derive(Clone, Debug)]
pub struct SeededRandom(u64);

impl SeededRandom {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> Self {
        SeededRandom(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl RandomSource for SeededRandom {
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}
