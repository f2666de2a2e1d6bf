//! A small seeded random source for tests that pick random points (kill
//! times, mutations): the seed is printed, and `WEIR_TEST_SEED` replays one.

/// xorshift64: enough to scatter test inputs, not for anything else.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `WEIR_TEST_SEED`, or from the clock; prints the seed.
    pub fn from_env() -> Self {
        let seed = std::env::var("WEIR_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("WEIR_TEST_SEED={seed}");
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A fraction in [0, 1) in thousandths.
    pub fn fraction(&mut self) -> f64 {
        (self.next_u64() % 1000) as f64 / 1000.0
    }
}
