//! Signatures a hostile member node can make with its own key: valid
//! under a cofactored or batch check, refused by `verify_strict`.
//!
//! The signature (R + T, s) with T a point of small order and
//! s = r + H(R + T ‖ A ‖ M)·a satisfies [8]([s]B − R − [k]A) = 0, so a
//! random-linear-combination batch equation passes whenever its random
//! coefficient cancels T. A strict check compares R itself and refuses.

use cluebridge::crypto::NodeSigner;
use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha512};

/// The secret scalar of an Ed25519 seed (RFC 8032 §5.1.5).
fn secret_scalar(seed: &[u8; 32]) -> Scalar {
    let h = Sha512::digest(seed);
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    Scalar::from_bytes_mod_order(a)
}

fn challenge(r: &CompressedEdwardsY, public: &[u8; 32], input: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r.as_bytes());
    h.update(public);
    h.update(input);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// A signature by `signer` over `input` (domain prefix included) whose R
/// carries the torsion point `EIGHT_TORSION[torsion]` (1..=7).
pub fn torsion_signature(
    signer: &NodeSigner,
    seed: &[u8; 32],
    input: &[u8],
    torsion: usize,
) -> Vec<u8> {
    assert!((1..8).contains(&torsion), "torsion index 1..=7");
    let a = secret_scalar(seed);
    let public = signer.verifying_key().to_bytes();
    let mut wide = [0u8; 64];
    wide.copy_from_slice(&Sha512::digest(input));
    let r = Scalar::from_bytes_mod_order_wide(&wide);
    let big_r = ED25519_BASEPOINT_POINT * r + EIGHT_TORSION[torsion];
    let compressed = big_r.compress();
    let s = r + challenge(&compressed, &public, input) * a;
    let mut signature = compressed.to_bytes().to_vec();
    signature.extend_from_slice(s.as_bytes());
    signature
}

/// Whether `signature` over `input` satisfies the cofactored equation,
/// the one a batch check effectively tests: this is what makes the
/// forged signatures dangerous rather than merely wrong.
pub fn passes_cofactored(public: &[u8; 32], input: &[u8], signature: &[u8]) -> bool {
    let r = CompressedEdwardsY::from_slice(&signature[..32]).expect("32 bytes");
    let (Some(big_r), Some(big_a)) = (r.decompress(), CompressedEdwardsY(*public).decompress())
    else {
        return false;
    };
    let mut s = [0u8; 32];
    s.copy_from_slice(&signature[32..]);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
        return false;
    };
    let k = challenge(&r, public, input);
    let diff: EdwardsPoint = ED25519_BASEPOINT_POINT * s - big_r - big_a * k;
    diff.mul_by_cofactor().is_identity()
}

/// The 32-byte seed in a node's key file.
pub fn seed_of(key_text: &str) -> [u8; 32] {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key_text.trim())
        .expect("base64 key");
    bytes.as_slice().try_into().expect("32-byte seed")
}
