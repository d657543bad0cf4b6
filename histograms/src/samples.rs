//! The identity of the samples a calibration was fed, computed from the bytes fed alone: a folder run and
//! a run over the same values from Python's iterables record the same identity, shards add up to the whole
//! run's, and no path, batch size or order enters it.

use sha2::{Digest, Sha256};

/// The sum, modulo 2^256, of the SHA-256 of each sample's bytes as fed (each array of a sample in input-name
/// order, little-endian). A sum rather than one running hash, so that shards' digests add up to the digest
/// of the whole list: the statistics do not depend on the order of the samples, and neither does this.
/// Every sample counts, so a sample fed twice changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplesDigest([u8; 32]);

impl SamplesDigest {
    /// Adds one sample, given as the byte runs that make it up, in order.
    pub fn add_sample<'a>(&mut self, parts: impl IntoIterator<Item = &'a [u8]>) {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        self.add_sample_sha256(hasher.finalize().into());
    }

    /// Adds one sample given by its SHA-256 (a caller that hashes the bytes its own way).
    pub fn add_sample_sha256(&mut self, sha256: [u8; 32]) {
        self.add(&SamplesDigest(sha256));
    }

    /// Adds the samples of another digest (another shard, another size's pass).
    pub fn add(&mut self, other: &SamplesDigest) {
        // Big-endian 256-bit addition; the carry out of the top byte is dropped (modulo 2^256).
        let mut carry = 0u16;
        for (a, b) in self.0.iter_mut().zip(other.0).rev() {
            let s = *a as u16 + b as u16 + carry;
            *a = s as u8;
            carry = s >> 8;
        }
    }

    /// Lower-case hex, as the `.hist` records it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads [`SamplesDigest::to_hex`]'s form; `None` unless 64 hex digits.
    pub fn from_hex(hex: &str) -> Option<SamplesDigest> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (k, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * k..2 * k + 2], 16).ok()?;
        }
        Some(SamplesDigest(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(samples: &[&[u8]]) -> SamplesDigest {
        let mut d = SamplesDigest::default();
        for s in samples {
            d.add_sample([*s]);
        }
        d
    }

    #[test]
    fn order_and_split_do_not_matter_but_every_sample_does() {
        let whole = of(&[b"a", b"bc", b"d"]);
        assert_eq!(of(&[b"d", b"a", b"bc"]), whole);
        let mut parts = of(&[b"a"]);
        parts.add(&of(&[b"bc", b"d"]));
        assert_eq!(parts, whole);
        // A sample twice is not the sample once, and a sample is its bytes, not how they are cut.
        assert_ne!(of(&[b"a", b"bc", b"d", b"d"]), whole);
        let mut cut = SamplesDigest::default();
        cut.add_sample([&b"b"[..], &b"c"[..]]);
        assert_eq!(cut, of(&[b"bc"]));
        assert_ne!(of(&[b"a", b"b", b"cd"]), whole);
    }

    #[test]
    fn the_sum_carries_across_bytes_and_wraps_at_the_top() {
        let mut a = SamplesDigest([0xff; 32]);
        let mut one = [0u8; 32];
        one[31] = 1;
        a.add(&SamplesDigest(one));
        assert_eq!(a, SamplesDigest::default());
        let mut b = SamplesDigest::default();
        b.0[31] = 0xff;
        b.add(&SamplesDigest(one));
        assert_eq!(&b.0[30..], &[1, 0]);
    }

    #[test]
    fn hex_round_trips_and_refuses_other_text() {
        let d = of(&[b"x"]);
        assert_eq!(SamplesDigest::from_hex(&d.to_hex()), Some(d));
        assert_eq!(d.to_hex(), format!("{:x}", Sha256::digest(b"x")));
        assert_eq!(SamplesDigest::from_hex("ab"), None);
        assert_eq!(SamplesDigest::from_hex(&"zz".repeat(32)), None);
        assert_eq!(SamplesDigest::from_hex(&"é".repeat(32)), None);
    }
}
