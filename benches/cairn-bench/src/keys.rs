//! Keys, values and the small deterministic random source the scenarios use.
//!
//! A key is the prefix followed by a zero-padded decimal index, padded to at
//! least `--key-size` bytes, so every key of a scenario sorts within its
//! prefix and a prefix Range finds exactly the keys it wrote.

/// splitmix64: tiny, fast, and good enough to pick keys. Seeded per client so
/// runs are reproducible and clients do not walk the same sequence.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` pseudo-random printable bytes (values the server cannot compress
    /// away trivially, like etcd's benchmark's random values).
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| b'a' + (self.next_u64() % 26) as u8)
            .collect()
    }
}

/// How a scenario names its keys.
#[derive(Clone, Debug)]
pub struct KeyGen {
    /// Every key starts with this.
    pub prefix: Vec<u8>,
    /// Minimum key length; the index is zero-padded up to it.
    pub size: usize,
    /// Number of distinct keys.
    pub space: u64,
}

impl KeyGen {
    pub fn new(prefix: &str, size: usize, space: u64) -> Self {
        KeyGen {
            prefix: prefix.as_bytes().to_vec(),
            size,
            space: space.max(1),
        }
    }

    /// The key with index `i` (taken modulo the key space).
    pub fn key(&self, i: u64) -> Vec<u8> {
        let digits = (i % self.space).to_string();
        let width = self
            .size
            .saturating_sub(self.prefix.len())
            .max(digits.len());
        let mut k = self.prefix.clone();
        k.extend(std::iter::repeat_n(b'0', width - digits.len()));
        k.extend(digits.as_bytes());
        k
    }

    /// A uniformly random key of the space.
    pub fn random(&self, rng: &mut Rng) -> Vec<u8> {
        self.key(rng.below(self.space))
    }

    /// The `range_end` that makes a Range cover the whole prefix.
    pub fn range_end(&self) -> Vec<u8> {
        prefix_end(&self.prefix)
    }
}

/// etcd's `GetPrefixRangeEnd`: the prefix with its last byte below 0xff
/// incremented and the rest cut; `"\0"` (everything) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_padded_and_sorted_within_the_prefix() {
        let g = KeyGen::new("b/", 8, 1000);
        assert_eq!(g.key(7), b"b/000007");
        assert_eq!(g.key(1007), b"b/000007");
        assert!(g.key(9) < g.key(10));
        let end = g.range_end();
        assert_eq!(end, b"b0");
        assert!(g.key(999).as_slice() < end.as_slice());
    }

    #[test]
    fn short_key_size_never_truncates_the_index() {
        let g = KeyGen::new("p", 2, 1_000_000);
        assert_eq!(g.key(123_456), b"p123456");
    }

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
            let u = a.unit();
            b.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
