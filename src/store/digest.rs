//! Digests of the store's content, for tests and checks: whether a
//! refusal changed nothing, and whether an index equals its rebuild.

use super::*;

impl Store {
    /// SHA-256 over every record of every tree, in order (envelopes by
    /// their bytes), and the end of the envelope segments (which also
    /// moves at every start): equal digests within one run of a node mean
    /// that nothing was written. Tests use it to show that a refusal changed
    /// nothing. Checkpoints (and the head record, which the log's entries
    /// already cover) are left out: background tasks sign and witness them
    /// at any time, whatever callers do.
    pub fn content_digest(&self) -> Result<[u8; 32]> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let (segment, end) = self.shared.segments.end();
        h.update(segment.to_be_bytes());
        h.update(end.to_be_bytes());
        self.hash_trees(&mut h, &[CHECKPOINTS, AUDIT_HEAD, EQUIVOCATIONS, META])?;
        Ok(h.finalize().into())
    }

    /// A digest of what the index holds: every tree but `meta` (which
    /// notes journal positions), envelopes by their bytes, not by where
    /// they lie. An index and its rebuild from the journal (`store
    /// reindex` on a copy of a stopped store) must give the same digest;
    /// crash tests compare them.
    pub fn index_digest(&self) -> Result<[u8; 32]> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        self.hash_trees(&mut h, &[META])?;
        Ok(h.finalize().into())
    }

    /// The digest of one tree's keys and values.
    pub(super) fn tree_digest(&self, tree: &Tree) -> Result<[u8; 32]> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        self.hash_tree(&mut h, tree)?;
        Ok(h.finalize().into())
    }

    fn hash_trees(&self, h: &mut sha2::Sha256, skip: &[usize]) -> Result<()> {
        use sha2::Digest;
        for (i, (name, tree)) in TREE_NAMES.iter().zip(&self.shared.trees).enumerate() {
            if skip.contains(&i) {
                continue;
            }
            h.update((name.len() as u64).to_be_bytes());
            h.update(name.as_bytes());
            self.hash_tree(h, tree)?;
        }
        Ok(())
    }

    fn hash_tree(&self, h: &mut sha2::Sha256, tree: &Tree) -> Result<()> {
        use sha2::Digest;
        {
            for entry in tree.iter() {
                let (k, v) = entry?;
                let v = v.to_vec();
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
        }
        Ok(())
    }
}
