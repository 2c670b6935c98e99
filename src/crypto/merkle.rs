//! The Merkle tree of a receipt batch, as RFC 9162 (Certificate
//! Transparency 2.0, section 2.1) defines it: one signature over the root
//! vouches for every leaf, and each leaf carries the audit path that leads
//! from it to the root.
//!
//! Leaf and interior hashes are domain-separated (a `0x00` or `0x01`
//! prefix), so no leaf can pose as an interior node or the other way round.
//! Pure functions, no I/O: an offline verifier needs nothing else.

use sha2::{Digest, Sha256};

/// The deepest audit path accepted: 2^32 leaves is far past any batch a
/// node signs, and the bound keeps a hostile proof's work small.
pub const MAX_PATH: usize = 32;

/// `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// A tree built over a batch of leaf hashes: its root and every leaf's
/// audit path.
#[derive(Debug)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes; the last level holds the root.
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// Builds the tree over `leaves` (at least one). Pairing neighbours
    /// level by level and carrying an odd last node up unchanged gives
    /// exactly RFC 9162's `MTH`, which splits at the largest power of two
    /// below the size.
    pub fn new(leaves: Vec<[u8; 32]>) -> Tree {
        assert!(!leaves.is_empty(), "a Merkle tree needs a leaf");
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let below = levels.last().expect("a level");
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node_hash(left, right),
                    [single] => *single,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn root(&self) -> [u8; 32] {
        self.levels.last().expect("a level")[0]
    }

    /// RFC 9162's `PATH(index, D[n])`: the siblings from the leaf up.
    pub fn audit_path(&self, index: usize) -> Vec<[u8; 32]> {
        let mut path = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = i ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            i >>= 1;
        }
        path
    }
}

/// Why an audit path cannot lead anywhere, whatever the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("leaf index {index} is not below the tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("a tree of {size} leaves is not a batch (at least 2)")]
    NotABatch { size: u64 },
    #[error("the audit path has {len} hashes; a tree of {size} leaves needs {needed}")]
    WrongLength {
        len: usize,
        size: u64,
        needed: usize,
    },
}

/// The number of hashes in every audit path of leaf `index` in a tree of
/// `size` leaves.
fn path_length(mut index: u64, size: u64) -> usize {
    let mut last = size - 1;
    let mut n = 0;
    while last > 0 {
        if index & 1 == 1 || index < last {
            n += 1;
        }
        index >>= 1;
        last >>= 1;
    }
    n
}

/// The root that `path` leads to from `leaf_hash` at `index` in a tree of
/// `size` leaves (RFC 9162, 2.1.3.2). A caller compares it with a trusted
/// root, or checks a signature over it.
pub fn root_from_path(
    leaf_hash: [u8; 32],
    index: u64,
    size: u64,
    path: &[[u8; 32]],
) -> Result<[u8; 32], PathError> {
    if size < 2 {
        return Err(PathError::NotABatch { size });
    }
    if index >= size {
        return Err(PathError::IndexOutOfRange { index, size });
    }
    let needed = path_length(index, size);
    if path.len() != needed || needed > MAX_PATH {
        return Err(PathError::WrongLength {
            len: path.len(),
            size,
            needed,
        });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf_hash;
    for p in path {
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    debug_assert_eq!(sn, 0, "the length check guarantees a full walk");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 9162's recursive definition, to check the level-wise build.
    fn mth(d: &[[u8; 32]]) -> [u8; 32] {
        if d.len() == 1 {
            return d[0];
        }
        let k = split(d.len());
        node_hash(&mth(&d[..k]), &mth(&d[k..]))
    }

    fn rfc_path(m: usize, d: &[[u8; 32]]) -> Vec<[u8; 32]> {
        if d.len() == 1 {
            return Vec::new();
        }
        let k = split(d.len());
        if m < k {
            let mut p = rfc_path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = rfc_path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }

    /// The largest power of two below `n` (n > 1).
    fn split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn leaves(n: usize, salt: u8) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| leaf_hash(&[salt, (i & 0xff) as u8, (i >> 8) as u8]))
            .collect()
    }

    #[test]
    fn a_known_tree_of_three() {
        let d = leaves(3, 0);
        let t = Tree::new(d.clone());
        let ab = node_hash(&d[0], &d[1]);
        assert_eq!(t.root(), node_hash(&ab, &d[2]));
        assert_eq!(t.audit_path(2), vec![ab]);
        assert_eq!(t.audit_path(0), vec![d[1], d[2]]);
    }

    #[test]
    fn leaf_and_node_hashes_are_separated() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut joined = a.to_vec();
        joined.extend_from_slice(&b);
        // A leaf holding the two child hashes is not the node above them.
        assert_ne!(leaf_hash(&joined), node_hash(&a, &b));
    }

    #[test]
    fn short_trees_and_bad_indices_are_refused() {
        let h = leaf_hash(b"x");
        assert_eq!(
            root_from_path(h, 0, 1, &[]),
            Err(PathError::NotABatch { size: 1 })
        );
        assert_eq!(
            root_from_path(h, 2, 2, &[h]),
            Err(PathError::IndexOutOfRange { index: 2, size: 2 })
        );
        assert!(matches!(
            root_from_path(h, 0, 4, &[h]),
            Err(PathError::WrongLength { needed: 2, .. })
        ));
        assert!(matches!(
            root_from_path(h, 0, u64::MAX, &[h; 3]),
            Err(PathError::WrongLength { needed: 64, .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_tree_is_rfc_9162s_and_every_path_leads_to_its_root(n in 1usize..200, salt: u8) {
            let d = leaves(n, salt);
            let t = Tree::new(d.clone());
            prop_assert_eq!(t.root(), mth(&d));
            for (i, leaf) in d.iter().enumerate() {
                let path = t.audit_path(i);
                prop_assert_eq!(&path, &rfc_path(i, &d));
                if n > 1 {
                    prop_assert_eq!(root_from_path(*leaf, i as u64, n as u64, &path), Ok(t.root()));
                }
            }
        }

        #[test]
        fn any_change_to_leaf_index_size_or_path_moves_the_root(
            n in 2usize..100, pick: prop::sample::Index, bit in 0usize..256, which in 0u8..4,
        ) {
            let d = leaves(n, 1);
            let t = Tree::new(d.clone());
            let i = pick.index(n);
            let (mut leaf, mut index, mut size, mut path) = (d[i], i as u64, n as u64, t.audit_path(i));
            match which {
                0 => leaf[bit / 8] ^= 1 << (bit % 8),
                1 => index ^= 1 << (bit % 8),
                2 => size ^= 1 << (bit % 8),
                _ => {
                    let k = bit % path.len();
                    path[k][bit / 8] ^= 1 << (bit % 8);
                }
            }
            // The size is signed with the root, so the pair must move.
            let led = root_from_path(leaf, index, size, &path).map(|r| (size, r));
            prop_assert_ne!(led, Ok((n as u64, t.root())));
        }

        #[test]
        fn a_path_from_one_batch_leads_nowhere_in_another(n in 2usize..64, m in 2usize..64, pick: prop::sample::Index) {
            let (a, b) = (Tree::new(leaves(n, 2)), Tree::new(leaves(m, 3)));
            let i = pick.index(n);
            let led = root_from_path(leaves(n, 2)[i], i as u64, n as u64, &a.audit_path(i));
            prop_assert_ne!(led, Ok(b.root()));
        }
    }
}
