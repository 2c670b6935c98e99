//! Receipts issued at about the same time share one signature, and so do
//! the envelope headers of messages accepted at about the same time:
//! callers hand them to the `receipt-signer` thread, which takes every
//! request waiting when it wakes, signs one Merkle root over the lot's
//! receipts and one over its headers ([`NodeSigner::sign_receipts`],
//! [`NodeSigner::sign_headers`]) and answers each caller with its own
//! signatures and inclusion proofs. Under load one Ed25519 signature
//! covers many; alone, a receipt or a header is signed as before, with no
//! wait added beyond the hand-over.

use crate::crypto::NodeSigner;
use crate::model::{BatchProof, Receipt, SignedReceipt};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// The most items taken at once (signed in lots of at most
/// [`crate::crypto::signing::MAX_LEAVES`] under one root each).
const MAX_BATCH: usize = 4096;
/// Requests waiting for the thread; a caller past this waits its turn.
const QUEUE: usize = 1024;

/// A header's signature and its place in the batch signed with it.
pub type HeaderSignature = (Vec<u8>, Option<BatchProof>);

/// What a caller hands over: encoded headers and receipts to sign.
#[derive(Default)]
struct Items {
    headers: Vec<bytes::Bytes>,
    receipts: Vec<Receipt>,
}

/// Their signatures, in the same order.
type Signed = (Vec<HeaderSignature>, Vec<SignedReceipt>);

struct Request {
    items: Items,
    answer: oneshot::Sender<Signed>,
}

/// A handle to the signing thread; the thread ends when the last handle
/// is dropped.
#[derive(Debug)]
pub struct ReceiptSigner {
    requests: mpsc::Sender<Request>,
    /// Signs in the caller's task when the thread is gone.
    signer: Arc<NodeSigner>,
}

impl ReceiptSigner {
    pub fn start(signer: Arc<NodeSigner>) -> std::io::Result<ReceiptSigner> {
        let (requests, queue) = mpsc::channel(QUEUE);
        let thread_signer = Arc::clone(&signer);
        std::thread::Builder::new()
            .name("receipt-signer".into())
            .spawn(move || run(&thread_signer, queue))?;
        Ok(ReceiptSigner { requests, signer })
    }

    /// Signs `receipts`, in order, together with whatever else is waiting.
    pub async fn sign(&self, receipts: Vec<Receipt>) -> Vec<SignedReceipt> {
        if receipts.is_empty() {
            return Vec::new();
        }
        let items = Items {
            headers: Vec::new(),
            receipts,
        };
        self.request(items).await.1
    }

    /// Signs an accepted message's encoded header and its `accepted`
    /// receipt, together with whatever else is waiting.
    pub async fn sign_accepted(
        &self,
        header: bytes::Bytes,
        accepted: Receipt,
    ) -> (HeaderSignature, SignedReceipt) {
        let items = Items {
            headers: vec![header],
            receipts: vec![accepted],
        };
        let (mut headers, mut receipts) = self.request(items).await;
        match (headers.pop(), receipts.pop()) {
            (Some(header), Some(receipt)) => (header, receipt),
            _ => unreachable!("one header and one receipt signed"),
        }
    }

    async fn request(&self, items: Items) -> Signed {
        let (answer, answered) = oneshot::channel();
        let request = Request { items, answer };
        if let Err(mpsc::error::SendError(request)) = self.requests.send(request).await {
            return sign(&self.signer, &request.items);
        }
        match answered.await {
            Ok(signed) => signed,
            // The thread only drops a request if it panicked while signing.
            Err(_) => panic!("the receipt-signer thread stopped while signing"),
        }
    }
}

fn sign(signer: &NodeSigner, items: &Items) -> Signed {
    (
        signer.sign_headers(&items.headers),
        signer.sign_receipts(&items.receipts),
    )
}

fn run(signer: &NodeSigner, mut queue: mpsc::Receiver<Request>) {
    while let Some(first) = queue.blocking_recv() {
        let size = |r: &Request| r.items.receipts.len().max(r.items.headers.len());
        let mut waiting = size(&first);
        let mut batch = vec![first];
        while waiting < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => {
                    waiting += size(&next);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let mut all = Items::default();
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            let Items { headers, receipts } = request.items;
            answers.push((headers.len(), receipts.len(), request.answer));
            all.headers.extend(headers);
            all.receipts.extend(receipts);
        }
        let (headers, receipts) = sign(signer, &all);
        let (mut headers, mut receipts) = (headers.into_iter(), receipts.into_iter());
        for (h, r, answer) in answers {
            // A caller that went away no longer needs its signatures.
            let signed = (
                headers.by_ref().take(h).collect(),
                receipts.by_ref().take(r).collect(),
            );
            let _ = answer.send(signed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Keyring, PublicKeyEntry};
    use crate::model::ReceiptKind;

    fn receipt(i: usize) -> Receipt {
        Receipt {
            message_id: format!("m-{i}"),
            sender_node: "discipline".into(),
            kind: ReceiptKind::Accepted,
            issuer_node: "discipline".into(),
            issued_at_ms: 1_700_000_000_000,
            reason: String::new(),
            header_sha256: [i as u8; 32],
            signing_key_id: "discipline-k1".into(),
            attempt: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_each_get_their_own_receipts_verifiable_alone() {
        let node = NodeSigner::generate("discipline", "discipline-k1");
        let mut keyring = Keyring::default();
        keyring.insert(
            "discipline",
            PublicKeyEntry::parse("discipline-k1", &node.public_key_base64()).unwrap(),
        );
        let signer = Arc::new(ReceiptSigner::start(Arc::new(node)).unwrap());
        let calls: Vec<_> = (0..64)
            .map(|c| {
                let signer = Arc::clone(&signer);
                tokio::spawn(async move {
                    let wanted: Vec<Receipt> =
                        (0..c % 4 + 1).map(|i| receipt(c * 10 + i)).collect();
                    (wanted.clone(), signer.sign(wanted).await)
                })
            })
            .collect();
        for call in calls {
            let (wanted, signed) = call.await.unwrap();
            assert_eq!(signed.len(), wanted.len());
            for (want, got) in wanted.iter().zip(&signed) {
                // Receipts asked for together are always signed together
                // (a lone one may join other callers' batch).
                assert!(got.batch.is_some() || wanted.len() == 1);
                // Each receipt verifies on its own, with its proof if any.
                assert_eq!(&keyring.verify_receipt(got).unwrap(), want);
            }
        }
    }
}
