//! Revisions: the logical clock of the MVCC store, and their byte encoding.
//!
//! Every write request that changes the store gets a new *main* revision; the
//! individual changes inside it (the ops of one txn) are numbered by *sub*
//! revision 0, 1, 2, ... A revision record in the backend is keyed by the
//! encoded revision, so a scan of the records in key order replays history in
//! the order it happened. The encoding is etcd's (8 bytes big-endian main,
//! `_`, 8 bytes big-endian sub, plus a trailing `t` on tombstones), which keeps
//! [`crate::mvcc::Store::hash_kv`] comparable with etcd's own HashKV.

use crate::error::StorageError;

/// Length of an encoded revision without the tombstone mark.
pub const REV_BYTES_LEN: usize = 8 + 1 + 8;
/// Length of an encoded revision that carries the tombstone mark.
pub const MARKED_REV_BYTES_LEN: usize = REV_BYTES_LEN + 1;
/// The byte appended to the encoded revision of a deletion record.
const TOMBSTONE_MARK: u8 = b't';

/// A point in the store's history: (main, sub), ordered lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The revision of the write request (what clients see as `mod_revision`).
    pub main: i64,
    /// The position of this change inside its write request (0 for a plain put).
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// etcd's encoding: big-endian main, `_`, big-endian sub, and a trailing
    /// `t` when the record is a tombstone. Main and sub are never negative, so
    /// byte order equals revision order.
    pub fn to_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut b = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        b.extend_from_slice(&self.main.to_be_bytes());
        b.push(b'_');
        b.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            b.push(TOMBSTONE_MARK);
        }
        b
    }

    /// Decodes [`Revision::to_bytes`]; returns the revision and whether it
    /// carries the tombstone mark.
    pub fn from_bytes(b: &[u8]) -> Result<(Revision, bool), StorageError> {
        let tombstone = match b.len() {
            REV_BYTES_LEN => false,
            MARKED_REV_BYTES_LEN if b[REV_BYTES_LEN] == TOMBSTONE_MARK => true,
            _ => {
                return Err(StorageError::corrupt(
                    "revision key",
                    format!("bad length or mark: {b:02x?}"),
                ))
            }
        };
        let mut main = [0u8; 8];
        let mut sub = [0u8; 8];
        main.copy_from_slice(&b[0..8]);
        sub.copy_from_slice(&b[9..17]);
        Ok((
            Revision::new(i64::from_be_bytes(main), i64::from_be_bytes(sub)),
            tombstone,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_keeps_order() {
        struct Case {
            rev: Revision,
            tombstone: bool,
        }
        let cases = [
            Case {
                rev: Revision::new(1, 0),
                tombstone: false,
            },
            Case {
                rev: Revision::new(2, 7),
                tombstone: true,
            },
            Case {
                rev: Revision::new(255, 256),
                tombstone: false,
            },
            Case {
                rev: Revision::new(i64::MAX, i64::MAX),
                tombstone: true,
            },
        ];
        for c in &cases {
            let b = c.rev.to_bytes(c.tombstone);
            assert_eq!(
                b.len(),
                if c.tombstone {
                    MARKED_REV_BYTES_LEN
                } else {
                    REV_BYTES_LEN
                }
            );
            let (r, t) = Revision::from_bytes(&b).expect("valid encoding");
            assert_eq!((r, t), (c.rev, c.tombstone));
        }
        // Byte order is revision order, with the tombstone mark not disturbing it.
        let encoded: Vec<Vec<u8>> = cases.iter().map(|c| c.rev.to_bytes(c.tombstone)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        assert!(Revision::new(1, 9) < Revision::new(2, 0));
        assert!(Revision::new(2, 0) < Revision::new(2, 1));
    }

    #[test]
    fn encoding_matches_etcd_layout() {
        let b = Revision::new(0x0102, 3).to_bytes(true);
        assert_eq!(
            b,
            vec![0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3, b't']
        );
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        for bad in [&b""[..], &b"short"[..], &[0u8; 18][..], &[0u8; 30][..]] {
            assert!(matches!(
                Revision::from_bytes(bad),
                Err(StorageError::Corrupt { .. })
            ));
        }
    }
}
